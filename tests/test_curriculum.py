"""The CPU curriculum is a set of fair experiments, checked before anything trains: the SFT set teaches the answer
format that evaluation reads, within the budget that evaluation and GRPO give; the GPU recipes keep medical-o1;
GRPO's signal summary (groups with signal, truncation, reward trend) is computed as the chapter says; and
`benchmarks/curriculum.py` writes the table the book reads (tested on the tiny model in test_eval_generate)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medreason import data
from medreason.tokens import token_lengths

ROOT = Path(__file__).resolve().parent.parent
SFT_RECIPE = ROOT / "configs" / "smollm2-135m-cpu.yaml"
GRPO_RECIPE = ROOT / "configs" / "smollm2-135m-grpo-cpu.yaml"


@pytest.fixture(scope="module")
def recipes():
    from medreason.config import parse_config

    return parse_config(["--config", str(SFT_RECIPE)]), parse_config(["--config", str(GRPO_RECIPE)])


@pytest.fixture(scope="module")
def mcq_sft():
    return data.load_splits(data.BUNDLED_MCQ)


def test_cpu_sft_recipe_trains_on_the_mcq_reasoning_set(recipes):
    (args, _, _), _ = recipes
    assert args.dataset == data.BUNDLED_MCQ


def test_gpu_recipes_keep_the_open_ended_medical_o1_format():
    from medreason.config import parse_config

    for name in ("smollm2-135m-gpu.yaml", "qwen2.5-0.5b-qlora-gpu.yaml"):
        args, _, _ = parse_config(["--config", str(ROOT / "configs" / name)])
        assert args.dataset == data.HUB_DATASET, name


def test_sft_completions_end_with_the_sentence_evaluation_reads(mcq_sft):
    """Golden: the completion is <think>reasoning</think> then exactly "The answer is X.", and the extractor reads
    X back from it; the prompt is the one generate-mode evaluation sends."""
    from medreason.mcq import extract_choice, load_benchmark, prompt_messages

    items = {i.question: i for i in load_benchmark(data.bundled_path(data.MCQ_REASONING_FILE))}
    for ex in mcq_sft["train"]:
        completion = ex["completion"][0]["content"]
        assert completion.startswith("<think>\n") and "\n</think>\n\nThe answer is " in completion
        letter = completion.rsplit("The answer is ", 1)[1].rstrip(".")
        stem = ex["prompt"][1]["content"].split("\n\nOptions:")[0].removeprefix("Question: ")
        item = items[stem]
        assert ex["prompt"][1]["content"] == prompt_messages(item, None)[0]["content"]
        assert letter == item.answer == extract_choice(completion, item.options)


def test_budget_covers_the_sft_traces(recipes, mcq_sft, tokenizer):
    """The evaluation budget (`medreason eval`'s default max_new_tokens) and GRPO's max_completion_length cover the
    95th percentile of the SFT completions' token length with room to spare, and max_length covers every whole
    example: the adapter is scored on what it was taught to write (issue: SFT scored at a budget shorter than its
    traces looked worse than the base model)."""
    from medreason.cli import build_parser

    (_, sft, _), (_, grpo, _) = recipes
    completions = [
        len(tokenizer(ex["completion"][0]["content"], add_special_tokens=False)["input_ids"]) + 1  # + <|im_end|>
        for split in mcq_sft.values()
        for ex in split
    ]
    p95 = float(np.percentile(completions, 95))
    eval_budget = build_parser().parse_args(["eval"]).max_new_tokens
    assert p95 * 1.5 <= grpo.max_completion_length, (p95, grpo.max_completion_length)
    assert p95 * 1.5 <= eval_budget, (p95, eval_budget)
    assert grpo.max_completion_length == eval_budget  # GRPO samples within the budget it is evaluated at
    longest = max(max(token_lengths(split, tokenizer)) for split in mcq_sft.values() if len(split))
    assert longest <= sft.max_length


def test_signal_summary_worked_example():
    """Four logged steps: groups with no spread 1, 0.5, 0, 0 -> with signal 0, 0.5, 1, 1 (mean 0.625); rewards
    0.5, 1.0, 1.5, 2.0 rise by exactly 0.5 a step."""
    from medreason.recipes.grpo import signal_summary

    history = [
        {
            "reward": r,
            "frac_reward_zero_std": z,
            "kl": k,
            "completions/clipped_ratio": c,
            "step": i + 1,
            "rewards/correctness_reward/mean": r / 2,
            "rewards/format_reward/mean": 1.0,
        }
        for i, (r, z, k, c) in enumerate(
            zip([0.5, 1.0, 1.5, 2.0], [1, 0.5, 0, 0], [0, 1e-3, 2e-3, 3e-3], [0.25, 0, 0, 0])
        )
    ]
    history.append({"train_runtime": 10.0, "step": 4})  # the trainer's closing summary has no reward
    s = signal_summary(history)
    assert s["steps"] == 4 and s["per_step"]["step"] == [1, 2, 3, 4]
    assert s["per_step"]["groups_with_signal"] == [0.0, 0.5, 1.0, 1.0]
    assert s["mean_groups_with_signal"] == pytest.approx(0.625)
    assert s["mean_truncated"] == pytest.approx(0.0625)
    assert s["reward_trend"]["slope"] == pytest.approx(0.5) and s["reward_trend"]["verdict"] == "rising"
    assert s["correctness_trend"]["slope"] == pytest.approx(0.25)


def test_a_local_mcq_reasoning_file_trains_and_a_bad_row_names_itself(tmp_path, capsys):
    """The same format in a user's file: converted on read; a row without reasoning is one line, exit 2."""
    import json

    from medreason.cli import main
    from medreason.errors import UserError

    item = {
        "question": "Which vitamin deficiency causes scurvy in a sailor?",
        "answer": "B",
        "options": {"A": "Vitamin A", "B": "Vitamin C", "C": "Vitamin D", "D": "Vitamin K"},
        "reasoning": "Scurvy is impaired collagen synthesis from a lack of ascorbic acid, vitamin C.",
    }
    good = tmp_path / "mine.jsonl"
    good.write_text(json.dumps(item) + "\n")
    rows, origin, source = data.read_rows(str(good))
    assert rows[0]["Response"] == "The answer is B." and rows[0]["stem"] == item["question"]
    assert source["kind"] == "file" and main(["data", "validate", str(good)]) == 0
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(item) + "\n" + json.dumps({**item, "reasoning": " "}) + "\n")
    with pytest.raises(UserError, match=r'bad.jsonl line 2: field "reasoning" is empty'):
        data.read_rows(str(bad))
    capsys.readouterr()
    assert main(["data", "validate", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and 'line 2: field "reasoning" is empty' in err[0]


def test_curriculum_script_pairs_by_id_and_the_committed_table_is_complete():
    """benchmarks/curriculum.py pairs two variants' answers by question id (B minus A, McNemar's b = A right only,
    c = B right only), and results/benchmarks/curriculum.json holds every field the chapters read, measured with
    the recipes in configs/ (their sha256)."""
    import json

    from test_eval_generate import _benchmark_module

    from medreason.io import sha256_file

    script = _benchmark_module("curriculum")
    a = [{"id": i, "correct": ok} for i, ok in enumerate([1, 1, 0, 0, 1])]
    b = [{"id": i, "correct": ok} for i, ok in reversed(list(enumerate([1, 0, 1, 1, 1])))]  # another order
    p = script.paired(a, b, "base", "sft")
    assert (p["variant_a"], p["variant_b"], p["b"], p["c"], p["n"]) == ("base", "sft", 1, 2, 5)
    assert p["diff"] == pytest.approx(0.2)

    report = json.loads((ROOT / "results" / "benchmarks" / "curriculum.json").read_text())
    assert report["recipe_sha256"] == {name: sha256_file(ROOT / path) for name, path in report["recipes"].items()}
    assert report["n_items"] == 126 and set(report["generate"]["variants"]) == {"base", "sft", "grpo"}
    for v in report["generate"]["variants"].values():
        assert set(v) >= {
            "accuracy",
            "accuracy_ci",
            "extraction_rate",
            "truncation_rate",
            "accuracy_when_extracted",
            "accuracy_when_extracted_ci",
            "tokens_median",
            "tokens_p95",
            "vs_best_baseline",
        }
    for mode in ("generate", "loglik_chat"):
        assert set(report[mode]["pairs"]) == {"sft_vs_base", "grpo_vs_sft"}
        for pair in report[mode]["pairs"].values():
            assert pair["ci_low"] <= pair["diff"] <= pair["ci_high"] and 0 < pair["p_value"] <= 1
    assert {"majority_label", "same_label", "longest_option", "best"} <= set(report["baselines"])
    grpo = report["grpo"]
    assert grpo["steps"] == len(grpo["per_step"]["reward"]) and grpo["reward_trend"]["verdict"] in (
        "rising",
        "flat",
        "falling",
    )
    assert report["machine"]["cpu_native_bf16"] in (True, False) and report["command"].startswith("python ")
    print(script.table(report))
