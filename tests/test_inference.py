"""Tests of inference and evaluation: medreason/chat.py and medreason/session.py (chat, --compare, batch answers, the reasoning
split), medreason/export.py (the merged model) and medreason/evaluate.py (held-out loss, MCQ accuracy with
lm-eval, the table), plus the one-line errors that bad input gets.

Everything runs on the 2-layer random Llama from conftest (`tiny_model_dir`) with a LoRA adapter made in
a second without the trainer (`adapter_dir`), so the file takes well under three minutes on 2 cores.
"""

from __future__ import annotations

import gc
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from medreason.chat import answer, chat_decoding, compare, split_reasoning
from medreason.cli import main
from medreason.config import DEFAULT_SYSTEM_PROMPT
from medreason.decode import Decoding, decode
from medreason.errors import UserError
from medreason.session import Session, load_for_inference

QUESTION = "A 30-year-old woman has fatigue and pallor. What is the most likely cause?"
FIXED_PROMPT = "Question: What is the most common cause of anaemia worldwide?\nAnswer:"


# --------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def session(adapter_dir):
    """The tiny base model + the adapter, as `medreason chat --adapter` loads them."""
    return load_for_inference(str(adapter_dir))


def _copy_adapter(adapter_dir: Path, dest: Path, **meta_changes) -> Path:
    shutil.copytree(adapter_dir, dest)
    meta = json.loads((dest / "medreason.json").read_text())
    meta.update(meta_changes)
    (dest / "medreason.json").write_text(json.dumps(meta))
    return dest


def _peft_model(tiny_model_dir, adapter_dir, dtype=None):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=dtype or torch.float32)
    return PeftModel.from_pretrained(base, str(adapter_dir)).eval()


def _reference(model, tokenizer, question: str, max_new_tokens: int, seed: int | None = None) -> str:
    """The answer to `question` in the chat template: greedy from a plain `generate` call (medreason's default
    repetition penalty), or, with `seed`, sampled at temperature 1 / top_p 0.9 by medreason.decode on this model
    alone (transformers' sampler draws its random numbers in another order, so a seeded draw is the decode loop's
    own contract)."""
    import torch

    text = tokenizer.apply_chat_template(
        [{"role": "system", "content": DEFAULT_SYSTEM_PROMPT}, {"role": "user", "content": question}],
        tokenize=False,
        add_generation_prompt=True,
    )
    if seed is not None:
        sampling = Decoding(
            max_new_tokens=max_new_tokens, greedy=False, temperature=1.0, top_p=0.9, repetition_penalty=1.1, seed=seed
        )
        return decode(model, tokenizer, [text], sampling)[0].text
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)
    with torch.inference_mode():
        out = model.generate(
            **ids,
            do_sample=False,
            max_new_tokens=max_new_tokens,
            repetition_penalty=1.1,
            pad_token_id=tokenizer.pad_token_id,
        )
    stop = {tokenizer.eos_token_id} | set(
        model.generation_config.eos_token_id
        if isinstance(model.generation_config.eos_token_id, list)
        else [model.generation_config.eos_token_id]
    )
    new = out[0, ids["input_ids"].shape[1] :].tolist()
    end = next((i for i, t in enumerate(new) if t in stop), len(new))
    return tokenizer.decode(new[:end], skip_special_tokens=True).strip()


def _error_line(capsys) -> str:
    """The one `medreason: error:` line the CLI printed, checked to be alone and without a traceback."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("medreason: error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture
def no_model_loading(monkeypatch):
    """Fail the test if anything loads model weights."""
    import medreason.models

    def refuse(*a, **k):
        raise AssertionError("the model was loaded before the bad input was reported")

    monkeypatch.setattr(medreason.models, "load_model_and_tokenizer", refuse)


# --------------------------------------------------------------------------------------------- export


def test_merged_model_logits_equal_base_plus_adapter(tiny_model_dir, adapter_dir, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from medreason.export import export

    parent = tmp_path / "exports"
    out = export(str(adapter_dir), str(parent / "merged"))
    assert out == parent / "merged"
    files = {p.name for p in out.iterdir()}
    assert "model.safetensors" in files and "config.json" in files
    assert not {"adapter_config.json", "adapter_model.safetensors"} & files
    assert [p.name for p in parent.iterdir()] == ["merged"]  # no temporary folder left behind

    tokenizer = AutoTokenizer.from_pretrained(out)
    ids = tokenizer(FIXED_PROMPT, return_tensors="pt")["input_ids"]
    merged = AutoModelForCausalLM.from_pretrained(out).eval()  # plain transformers, no PEFT
    assert not hasattr(merged, "peft_config")
    reference = _peft_model(tiny_model_dir, adapter_dir)
    with torch.inference_mode():
        merged_logits = merged(ids).logits.float()
        adapter_logits = reference(ids).logits.float()
        with reference.disable_adapter():
            base_logits = reference(ids).logits.float()
    assert (merged_logits - adapter_logits).abs().max().item() < 1e-4
    assert (merged_logits - base_logits).abs().max().item() > 1e-3  # the adapter is really in there


def test_export_refuses_a_folder_that_is_not_a_model(adapter_dir, tmp_path):
    from medreason.export import export

    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="not a model folder"):
        export(str(adapter_dir), str(tmp_path / "notes"))
    assert (tmp_path / "notes" / "keep.txt").read_text() == "mine"


# --------------------------------------------------------------------------------------------- chat, compare


def test_compare_answers_from_one_copy_of_the_base_weights(tiny_model_dir, adapter_dir, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    # Count every Llama built (from_pretrained, from_config) and every Llama alive while loading + comparing.
    built = []
    original_init = LlamaForCausalLM.__init__

    # medreason.adapter checks the adapter against a weightless copy on the meta device first: not a copy of weights
    import medreason.adapter

    checking, original_shapes = [], medreason.adapter.expected_shapes

    def weightless_check(*a, **k):
        checking.append(1)
        try:
            return original_shapes(*a, **k)
        finally:
            checking.pop()

    monkeypatch.setattr(medreason.adapter, "expected_shapes", weightless_check)

    def counting_init(self, *a, **k):
        if not checking:
            built.append(1)
        original_init(self, *a, **k)

    monkeypatch.setattr(LlamaForCausalLM, "__init__", counting_init)
    gc.collect()
    alive_before = {id(o) for o in gc.get_objects() if isinstance(o, LlamaForCausalLM)}

    s = load_for_inference(str(adapter_dir))
    # Both answers must run through the same base layers: count calls into one projection's frozen
    # base weights and into its LoRA branch.
    lora_layer = s.model.get_base_model().model.layers[0].self_attn.q_proj
    calls = {"base_layer": 0, "lora_A": 0}

    def counter(name):
        return lambda *a: calls.__setitem__(name, calls[name] + 1)

    hooks = [
        lora_layer.base_layer.register_forward_hook(counter("base_layer")),
        lora_layer.lora_A["default"].register_forward_hook(counter("lora_A")),
    ]
    ((base, tuned),) = compare(s, [QUESTION], Decoding(max_new_tokens=8, repetition_penalty=1.1))
    # the tiny random base answers greedily with blank lines only, so also compare sampled answers
    ((sampled_base, sampled_tuned),) = compare(s, [QUESTION], chat_decoding(max_new_tokens=8, temperature=1.0, seed=5))
    for h in hooks:
        h.remove()
    gc.collect()
    alive_now = [o for o in gc.get_objects() if isinstance(o, LlamaForCausalLM) and id(o) not in alive_before]
    monkeypatch.undo()

    assert len(built) == 1, f"{len(built)} Llama models were built for one comparison"
    assert len(alive_now) == 1 and alive_now[0] is s.model.get_base_model()
    assert calls["lora_A"] > 0 and calls["base_layer"] > calls["lora_A"]  # base answer used the same layer, LoRA off

    assert (base.source, tuned.source) == ("base", "adapter")
    assert base.question == tuned.question == QUESTION
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    plain = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=s.model.dtype).eval()
    peft_model = _peft_model(tiny_model_dir, adapter_dir, dtype=s.model.dtype)
    assert base.text == _reference(plain, tokenizer, QUESTION, 8)
    assert tuned.text == _reference(peft_model, tokenizer, QUESTION, 8)
    assert sampled_base.text == _reference(plain, tokenizer, QUESTION, 8, seed=5)
    assert sampled_tuned.text == _reference(peft_model, tokenizer, QUESTION, 8, seed=5)
    # otherwise the comparisons above prove nothing
    assert base.text != tuned.text and sampled_base.text != sampled_tuned.text and sampled_base.text
    assert 0 < base.new_tokens <= 8 and 0 < tuned.new_tokens <= 8


def test_greedy_is_deterministic_and_sampling_is_reproducible(session):
    greedy = Decoding(max_new_tokens=6)
    first = answer(session, [QUESTION, "What is anemia?"], greedy)
    second = answer(session, [QUESTION, "What is anemia?"], greedy)
    assert [a.text for a in first] == [a.text for a in second]

    sampled = chat_decoding(max_new_tokens=6, temperature=1.0, top_p=0.95, seed=7)
    one = answer(session, [QUESTION], sampled)[0].text
    two = answer(session, [QUESTION], sampled)[0].text
    assert one == two


def test_batched_answers_equal_single_answers(session):
    """Left padding and the attention mask: a question answered in a batch gets the same greedy answer."""
    greedy = Decoding(max_new_tokens=5)
    short, long = "What is anemia?", QUESTION + " Explain the mechanism briefly."
    batch = answer(session, [short, long], greedy)
    assert batch[0].text == answer(session, [short], greedy)[0].text
    assert batch[1].text == answer(session, [long], greedy)[0].text


def test_bad_sampling_values_are_refused():
    with pytest.raises(UserError, match="max_new_tokens"):
        chat_decoding(max_new_tokens=0)
    with pytest.raises(UserError, match="temperature"):
        chat_decoding(temperature=0)
    with pytest.raises(UserError, match="top_p"):
        chat_decoding(top_p=1.5)
    assert chat_decoding(temperature=0, greedy=True).greedy


def test_compare_needs_an_adapter(tiny_model_dir):
    s = Session(model=None, tokenizer=None, base_model=str(tiny_model_dir))
    with pytest.raises(UserError, match="--compare needs --adapter"):
        compare(s, [QUESTION])


# --------------------------------------------------------------------------------------------- reasoning split


@pytest.mark.parametrize(
    "text, template, expected",
    [
        (
            "<think>\nLow ferritin means iron deficiency.\n</think>\n\nIron deficiency anaemia.",
            "think",
            ("Low ferritin means iron deficiency.", "Iron deficiency anaemia."),
        ),
        (
            "<think>Pallor and fatigue, so check the haemoglobin",
            "think",  # ran out of tokens while thinking
            ("Pallor and fatigue, so check the haemoglobin", ""),
        ),
        ("  Iron deficiency anaemia.  ", "think", ("", "Iron deficiency anaemia.")),
        ("<think></think>Answer: B", "think", ("", "Answer: B")),
        (
            "<think>\nstep one\nstep two\n</think>\nfirst line\nsecond line",
            "think",
            ("step one\nstep two", "first line\nsecond line"),
        ),
        (
            "## Thinking\n\nLow ferritin.\n\n## Final Response\n\nIron deficiency.",
            "huatuo",
            ("Low ferritin.", "Iron deficiency."),
        ),
        ("Iron deficiency.", "huatuo", ("", "Iron deficiency.")),
        ("<think>x</think>y", "huatuo", ("", "<think>x</think>y")),  # the adapter's template decides
    ],
)
def test_split_reasoning(text, template, expected):
    assert split_reasoning(text, template) == expected


# --------------------------------------------------------------------------------------------- bad input


def test_missing_adapter_folder(tmp_path, capsys, no_model_loading):
    missing = tmp_path / "no-such-adapter"
    assert main(["chat", "--adapter", str(missing), "--prompt", "What is anemia?"]) == 2
    line = _error_line(capsys)
    assert str(missing) in line and "does not exist" in line


def test_folder_without_adapter_config(tmp_path, capsys, no_model_loading):
    folder = tmp_path / "not-an-adapter"
    folder.mkdir()
    (folder / "README.md").write_text("hello")
    assert main(["chat", "--adapter", str(folder), "--prompt", "What is anemia?"]) == 2
    assert "adapter_config.json is missing" in _error_line(capsys)


def test_adapter_trained_on_another_base(adapter_dir, tiny_model_dir, tmp_path, capsys, no_model_loading):
    other = _copy_adapter(adapter_dir, tmp_path / "other", base_model="someone/other-model")
    assert main(["chat", "--adapter", str(other), "--model", str(tiny_model_dir), "--prompt", "What is anemia?"]) == 2
    line = _error_line(capsys)
    assert "someone/other-model" in line and str(tiny_model_dir) in line


def test_adapter_with_another_vocabulary(adapter_dir, tokenizer, tmp_path, capsys, no_model_loading):
    other = _copy_adapter(adapter_dir, tmp_path / "other-vocab", vocab_size=32000)
    assert main(["chat", "--adapter", str(other), "--prompt", "What is anemia?"]) == 2
    line = _error_line(capsys)
    assert "32000" in line and str(len(tokenizer)) in line and len(tokenizer) != 32000


def test_empty_prompt(tiny_model_dir, capsys, no_model_loading):
    assert main(["chat", "--model", str(tiny_model_dir), "--prompt", "  "]) == 2
    assert "empty prompt" in _error_line(capsys)


def test_empty_question_in_answer(session):
    with pytest.raises(UserError, match="empty prompt"):
        answer(session, ["What is anemia?", " \n"])


def test_corrupt_mcq_file_names_the_row(in_tmp, capsys, monkeypatch):
    import medreason.session

    def refuse(*a, **k):
        raise AssertionError("the model was loaded before the MCQ file was checked")

    monkeypatch.setattr(medreason.session, "load_for_inference", refuse)
    good = {
        "question": "Which vitamin deficiency causes scurvy?",
        "options": {"A": "Vitamin A", "B": "Vitamin B12", "C": "Vitamin C", "D": "Vitamin D"},
        "answer": "C",
    }
    bad = dict(good, answer="E")
    Path("bad.jsonl").write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n" + json.dumps(good) + "\n")
    assert main(["eval", "--mcq", "bad.jsonl"]) == 2
    line = _error_line(capsys)
    assert "bad.jsonl line 2" in line and "'E'" in line


# --------------------------------------------------------------------------------------------- chat CLI


def test_chat_batch_mode_writes_one_row_per_question(tiny_model_dir, adapter_dir, in_tmp):
    questions = ["What is anemia?", QUESTION, "Name one cause of chest pain."]
    Path("questions.txt").write_text("\n".join(questions[:2]) + "\n\n" + questions[2] + "\n")
    assert (
        main(
            [
                "chat",
                "--model",
                str(tiny_model_dir),
                "--questions",
                "questions.txt",
                "--out",
                "out/a.jsonl",
                "--greedy",
                "--max-new-tokens",
                "5",
            ]
        )
        == 0
    )
    rows = [json.loads(line) for line in Path("out/a.jsonl").read_text().splitlines()]
    assert [r["question"] for r in rows] == questions
    assert all(r["source"] == "base" and "base_answer" not in r and isinstance(r["answer"], str) for r in rows)
    assert not list(Path("out").glob("*.tmp"))

    Path("questions.jsonl").write_text("\n".join(json.dumps({"question": q}) for q in questions) + "\n")
    assert (
        main(
            [
                "chat",
                "--adapter",
                str(adapter_dir),
                "--compare",
                "--questions",
                "questions.jsonl",
                "--out",
                "out/b.jsonl",
                "--greedy",
                "--max-new-tokens",
                "5",
            ]
        )
        == 0
    )
    rows = [json.loads(line) for line in Path("out/b.jsonl").read_text().splitlines()]
    assert [r["question"] for r in rows] == questions
    assert all(r["source"] == "adapter" and isinstance(r["base_answer"], str) for r in rows)
    # the base answers in --compare are the base model's answers
    first = json.loads(Path("out/a.jsonl").read_text().splitlines()[0])
    assert rows[0]["base_answer"] == first["answer"]


def test_chat_prompt_with_compare_prints_both(adapter_dir, capsys):
    assert (
        main(
            [
                "chat",
                "--adapter",
                str(adapter_dir),
                "--compare",
                "--prompt",
                "What is anemia?",
                "--greedy",
                "--max-new-tokens",
                "4",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "=== base model" in out and f"=== with adapter ({adapter_dir})" in out


def _chat_subprocess(cwd, stdin_text, *args):
    return subprocess.run(
        [sys.executable, "-m", "medreason", "chat", *args, "--greedy", "--max-new-tokens", "4"],
        input=stdin_text,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )


@pytest.mark.slow
def test_interactive_chat_answers_then_quits(tiny_model_dir, adapter_dir, session, in_tmp):
    # with the adapter: the tiny random base alone answers greedily with blank lines only
    proc = _chat_subprocess(
        in_tmp, "What is anemia?\nquit\n", "--model", str(tiny_model_dir), "--adapter", str(adapter_dir)
    )
    assert proc.returncode == 0, proc.stderr
    assert "model>" in proc.stdout
    expected = answer(session, ["What is anemia?"], Decoding(max_new_tokens=4, repetition_penalty=1.1))[0].text
    assert expected and expected in proc.stdout.split("model>", 1)[1]


@pytest.mark.slow
def test_interactive_chat_ends_cleanly_on_eof(tiny_model_dir, in_tmp):
    proc = _chat_subprocess(in_tmp, "", "--model", str(tiny_model_dir))
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and "model>" not in proc.stdout


# --------------------------------------------------------------------------------------------- evaluate


@pytest.mark.slow
def test_evaluate_base_and_adapter(adapter_dir, in_tmp):
    from medreason.evaluate import evaluate
    from medreason.report import table

    results = evaluate(str(adapter_dir), limit=8, batch_size=4)
    path = in_tmp / "results" / "adapter" / "eval.json"
    assert Path(results["path"]) == Path("results/adapter/eval.json") and path.is_file()
    saved = json.loads(path.read_text())
    assert saved["chance"] == 0.25 and saved["n_mcq"] == 8 and saved["n_test"] == 8
    assert set(saved["variants"]) == {"base", "adapter"}
    for name, v in saved["variants"].items():
        assert v["test_loss"] > 0 and math.isclose(v["test_perplexity"], math.exp(v["test_loss"]), rel_tol=1e-9)
        mcq = v["tasks"]["medreason_mcq"]
        assert 0 <= mcq["acc"] <= 1 and isinstance(mcq["acc_stderr"], float) and mcq["acc_stderr"] >= 0
        assert mcq["acc"] * 8 == round(mcq["acc"] * 8)  # a share of 8 questions
    assert saved["variants"]["base"]["test_loss"] != saved["variants"]["adapter"]["test_loss"]
    shown = table(results)
    assert "chance" in shown and "base" in shown and "adapter" in shown and "medreason_mcq" in shown


def test_heldout_loss_equals_a_hand_computation(session):
    import torch
    from datasets import Dataset

    from medreason.data import load_splits
    from medreason.scoring import heldout_loss

    tok = session.tokenizer
    test = load_splits("bundled", template="think", system_prompt=DEFAULT_SYSTEM_PROMPT)["test"]
    examples = [test[0], test[1]]

    def by_hand(ex) -> tuple[float, int]:
        prompt = tok.apply_chat_template(ex["prompt"], tokenize=False, add_generation_prompt=True)
        full = tok.apply_chat_template(ex["prompt"] + ex["completion"], tokenize=False)
        assert full.startswith(prompt)
        prompt_ids = tok(prompt, add_special_tokens=False)["input_ids"]
        ids = tok(full, add_special_tokens=False)["input_ids"]
        assert ids[: len(prompt_ids)] == prompt_ids
        with torch.inference_mode():
            logp = torch.log_softmax(session.model(torch.tensor([ids])).logits[0].float(), dim=-1)
        nll = -sum(logp[i - 1, ids[i]].item() for i in range(len(prompt_ids), len(ids)))
        return nll, len(ids) - len(prompt_ids)

    nll0, n0 = by_hand(examples[0])
    assert heldout_loss(session.model, tok, Dataset.from_list(examples[:1])) == pytest.approx(nll0 / n0, abs=1e-4)
    nll1, n1 = by_hand(examples[1])
    assert n0 != n1  # different lengths, so batching them pads one
    both = heldout_loss(session.model, tok, Dataset.from_list(examples), batch_size=2)
    assert both == pytest.approx((nll0 + nll1) / (n0 + n1), abs=1e-4)


def test_mcq_task_prompt_follows_the_medqa_convention():
    import jinja2

    from medreason.data import load_mcq
    from medreason.harness import mcq_task_config
    from medreason.readers import bundled_path

    config = mcq_task_config()
    item = load_mcq()[0]
    env = jinja2.Environment()
    text = env.from_string(config["doc_to_text"]).render(**item)
    o = item["options"]
    assert text == (f"Question: {item['question']}\nA. {o['A']}\nB. {o['B']}\nC. {o['C']}\nD. {o['D']}\nAnswer:")
    assert config["doc_to_choice"] == ["A", "B", "C", "D"] and config["target_delimiter"] == " "
    target = int(env.from_string(config["doc_to_target"]).render(**item))
    assert "ABCD"[target] == item["answer"]
    assert config["output_type"] == "multiple_choice"
    assert Path(config["dataset_kwargs"]["data_files"]["test"]) == bundled_path("mcq.jsonl")
