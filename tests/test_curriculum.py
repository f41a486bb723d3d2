"""The CPU curriculum is a set of fair experiments, checked before anything trains: the SFT set teaches the answer
format that evaluation reads, within the budget that evaluation and GRPO give; the GPU recipes keep medical-o1;
GRPO's signal summary (groups with signal, truncation, reward trend) is computed as the chapter says; and
`benchmarks/curriculum.py` writes the table the book reads (tested on the tiny model in test_eval_generate)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medreason import data
from medreason.readers import bundled_path
from medreason.rows import BUNDLED_MCQ, HUB_DATASET, MCQ_REASONING_FILE, read_rows
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
    return data.load_splits(BUNDLED_MCQ)


def test_cpu_sft_recipe_trains_on_the_mcq_reasoning_set(recipes):
    (args, _, _), _ = recipes
    assert args.dataset == BUNDLED_MCQ


def test_gpu_recipes_keep_the_open_ended_medical_o1_format():
    from medreason.config import parse_config

    for name in ("smollm2-135m-gpu.yaml", "qwen2.5-0.5b-qlora-gpu.yaml"):
        args, _, _ = parse_config(["--config", str(ROOT / "configs" / name)])
        assert args.dataset == HUB_DATASET, name


def test_sft_completions_end_with_the_sentence_evaluation_reads(mcq_sft):
    """Golden: the completion is <think>reasoning</think> then exactly "The answer is X.", and the extractor reads
    X back from it; the prompt is the one generate-mode evaluation sends."""
    from medreason.mcq import extract_choice, load_benchmark, prompt_messages

    items = {i.question: i for i in load_benchmark(bundled_path(MCQ_REASONING_FILE))}
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
    rows, origin, source = read_rows(str(good))
    assert rows[0]["Response"] == "The answer is B." and rows[0]["stem"] == item["question"]
    assert source["kind"] == "file" and main(["data", "validate", str(good)]) == 0
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(item) + "\n" + json.dumps({**item, "reasoning": " "}) + "\n")
    with pytest.raises(UserError, match=r'bad.jsonl line 2: field "reasoning" is empty'):
        read_rows(str(bad))
    capsys.readouterr()
    assert main(["data", "validate", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and 'line 2: field "reasoning" is empty' in err[0]


def test_curriculum_script_pairs_by_id_and_checks_the_randomization():
    """benchmarks/curriculum.py pairs two models' answers by item id whatever their order (B minus A, McNemar's
    b = A right only, c = B right only), keeps only the facts asked for, and its randomization check is the plain
    difference between the halves of the base model."""
    from helpers import benchmark_module

    script = benchmark_module("curriculum")
    a = [{"id": f"f{i}:mcq", "correct": ok} for i, ok in enumerate([True, True, False, False, True])]
    b = [{"id": f"f{i}:mcq", "correct": ok} for i, ok in reversed(list(enumerate([True, False, True, True, True])))]
    p = script.paired_on(a, b)
    assert (p["b"], p["c"], p["n"]) == (1, 2, 5) and p["diff"] == pytest.approx(0.2)
    kept = script.paired_on(a, b, keep={"f0", "f1"})
    assert (kept["n"], kept["b"], kept["c"]) == (2, 1, 0)
    base = {r: [{"id": f"f{i}", "correct": i < 3} for i in range(6)] for r in script.READOUTS}
    check = script.randomization(base, taught={"f0", "f1", "f2"})
    assert check["recall"]["taught"] == 1.0 and check["recall"]["untaught"] == 0.0
    assert check["recall"]["diff"] == pytest.approx(1.0)


def test_the_committed_curriculum_is_consistent_and_measured_with_these_recipes():
    """results/benchmarks/curriculum.json holds what the chapters need (knowledge: the randomization check and the
    recipe's arm, each read three ways; GRPO: pass@k and the power calculation; before and after per half where the run was made), measured
    with the recipe files in configs/ (their sha256) and the seed in the facts recipe; every other arm it holds is
    complete, with its comparison (dose with dose1, capacity with full). Each phase and arm names its command and the
    machine it ran on (the chapters say so where a part is not measured yet)."""
    import json

    from medreason.config import parse_recipe
    from medreason.facts import assign_halves, load_facts
    from medreason.io import sha256_file

    report = json.loads((ROOT / "results" / "benchmarks" / "curriculum.json").read_text())
    assert report["recipe_sha256"] == {name: sha256_file(ROOT / path) for name, path in report["recipes"].items()}
    k = report["knowledge"]
    facts_args, _, _ = parse_recipe(["--config", str(ROOT / report["recipes"]["facts"])])
    facts = load_facts()
    assert k["seed"] == facts_args.facts_seed and k["facts"] == len(facts)
    assert k["taught"] == sorted(f.id for f in assign_halves(facts, k["seed"])["taught"])
    assert k["command"].startswith("HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/curriculum.py")
    readouts = ("recall", "generate", "loglik")
    assert set(k["randomization"]) == set(readouts)
    assert "lora" in k["arms"] and set(k["arms"]) <= {"lora", "facts_only", "dose1", "full"}
    for name, arm in k["arms"].items():
        for r in readouts:
            e = arm["effect"][r]
            assert e["ci_low"] <= e["effect"] <= e["ci_high"] and 0 < e["p_value"] <= 1, (name, r)
            assert e["taught"]["n"] == k["n_taught"] and e["untaught"]["n"] == k["n_untaught"]
            assert len(arm["rows"][r]) == k["facts"]
        assert 0 < arm["old_heldout"]["p_value"] <= 1
    assert ("dose" in k) == ("dose1" in k["arms"]) and ("capacity" in k) == ("full" in k["arms"])
    for section in ("retrieval", "dose", "capacity"):
        assert section not in k or set(k[section]) == set(readouts), section
    for p in k.get("pilots", {}).values():
        assert p["command"].startswith("HF_HUB_OFFLINE=1") and p["steps"] > 0
    g = report["grpo"]
    assert g["command"].startswith("HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/curriculum.py")
    assert g["machine"]["native_bf16"] in (True, False)
    adapter = g["pass_at_k_pool"]["adapter"]
    assert adapter["pass@1"] <= adapter["pass@4"] <= adapter["pass@8"]
    assert g["power"]["room"] == pytest.approx(adapter["pass@8"] - adapter["pass@1"])
    assert 0 < g["power"]["detectable_gain_80"] < 1
    if "before_after" in g:  # the run itself (the GRPO chapter says so when it is not measured yet)
        for half in ("taught", "untaught"):
            assert "greedy" in g["before_after"][half]
            for pair in g["before_after"][half].values():
                assert pair["ci_low"] <= pair["diff"] <= pair["ci_high"] and 0 < pair["p_value"] <= 1
        assert g["steps"] == len(g["per_step"]["reward"])
