"""End-to-end evaluation on the tiny test model: `medreason eval --mode generate` (and loglik) on a five-option
file and on a yes/no/maybe-with-context file, base and adapter from one copy of the weights, per-item JSONL,
paired figures, the answer cache, and bad input refused before any model loads."""

import json

import pytest

from medreason.cli import main

FIVE = [
    {"id": f"five-{i}", "question": q, "options": dict(zip("ABCDE", opts)), "answer": a, "specialty": s}
    for i, (q, opts, a, s) in enumerate(
        [
            (
                "A 15-year-old has arm hypertension and delayed femoral pulses. Associated cardiac lesion?",
                [
                    "Tetralogy of Fallot",
                    "Ebstein anomaly",
                    "Transposition",
                    "Bicuspid aortic valve",
                    "Truncus arteriosus",
                ],
                "D",
                "Cardiology",
            ),
            (
                "A woman has apical ballooning after emotional stress with clean coronaries. Diagnosis?",
                ["Prinzmetal angina", "Myocarditis", "Takotsubo cardiomyopathy", "Anterior STEMI", "Aortic dissection"],
                "C",
                "Cardiology",
            ),
            (
                "Which drug reverses heparin?",
                ["Vitamin K", "Protamine sulfate", "Idarucizumab", "Andexanet", "Plasma"],
                "B",
                "Hematology",
            ),
            (
                "First-line treatment of anaphylaxis?",
                ["IM epinephrine", "IV diphenhydramine", "Oral prednisone", "Nebulized albuterol", "IV ranitidine"],
                "A",
                "Emergency",
            ),
            (
                "Most common cause of community-acquired pneumonia?",
                ["S. aureus", "Klebsiella", "Legionella", "Mycoplasma", "Streptococcus pneumoniae"],
                "E",
                "Infectious",
            ),
        ],
        1,
    )
]
PUBMEDQA = [
    {"id": f"pq-{i}", "context": c, "question": q, "options": ["yes", "no", "maybe"], "answer": a, "group": g}
    for i, (c, q, a, g) in enumerate(
        [
            (
                "In 200 adults, drug X lowered systolic pressure by 12 mm Hg versus placebo (p < 0.001).",
                "Does drug X lower blood pressure?",
                "yes",
                "cardiology",
            ),
            (
                "A cohort of 90 found no difference in infection rates with or without the dressing (p = 0.62).",
                "Does the dressing reduce infections?",
                "no",
                "surgery",
            ),
            (
                "A pilot study of 12 patients suggested a trend toward shorter stays (p = 0.09).",
                "Does early mobilisation shorten stays?",
                "maybe",
                "surgery",
            ),
        ],
        1,
    )
]


@pytest.fixture
def files(in_tmp):
    five = in_tmp / "usmle.jsonl"
    five.write_text("".join(json.dumps(r) + "\n" for r in FIVE))
    pq = in_tmp / "pubmedqa.json"
    pq.write_text(json.dumps(PUBMEDQA))
    return {"five": five, "pubmedqa": pq}


def _read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("name, n, chance", [("five", 5, 1 / 5), ("pubmedqa", 3, 1 / 3)])
def test_generate_mode_end_to_end(adapter_dir, files, in_tmp, capsys, name, n, chance):
    code = main(
        [
            "eval",
            "--adapter",
            str(adapter_dir),
            "--mode",
            "generate",
            "--mcq",
            str(files[name]),
            "--max-new-tokens",
            "6",
            "--batch-size",
            "2",
            "--run-name",
            name,
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "chance level" in out and "adapter - base" in out and "McNemar" in out and "extracted" in out
    report = json.loads((in_tmp / "results" / name / "eval.json").read_text())
    assert report["mode"] == "generate" and report["n_mcq"] == n and report["chance"] == pytest.approx(chance)
    assert set(report["variants"]) == {"base", "adapter"}
    for v in report["variants"].values():
        assert 0 <= v["accuracy"] <= v["extraction_rate"] <= 1
        assert 0 < v["tokens_median"] <= v["tokens_p95"] <= 6 and 0 <= v["truncation_rate"] <= 1
        assert sum(g["n"] for g in v["accuracy_by_group"].values()) == n
    paired = report["paired"]
    assert paired["n"] == n and paired["ci_low"] <= paired["diff"] <= paired["ci_high"] and 0 < paired["p_value"] <= 1
    rows = _read_jsonl(in_tmp / "results" / name / "eval_items.jsonl")
    assert len(rows) == 2 * n and {r["variant"] for r in rows} == {"base", "adapter"}
    items = {r["id"]: r for r in (FIVE if name == "five" else PUBMEDQA)}
    for r in rows:
        assert set(r) >= {"id", "group", "variant", "output", "extracted", "answer", "correct", "tokens", "truncated"}
        assert r["answer"] == items[r["id"]]["answer"].lower() if name == "pubmedqa" else items[r["id"]]["answer"]
        assert r["correct"] == (r["extracted"] == r["answer"])
        assert r["truncated"] == (r["tokens"] == 6)  # no end-of-turn token within the budget
    by_variant = {v: [r["output"] for r in rows if r["variant"] == v] for v in ("base", "adapter")}
    assert by_variant["base"] != by_variant["adapter"]  # the adapter is really off for the base variant
    # every accuracy is read against the no-knowledge baselines of the file, printed and recorded
    from medreason.baselines import trivial_baselines
    from medreason.mcq import load_benchmark

    assert "no-knowledge baselines" in out and "vs the best no-knowledge rule" in out
    assert "among extracted" in out or "no answer extracted" in out
    assert report["baselines"] == json.loads(json.dumps(trivial_baselines(load_benchmark(files[name]))))
    for name_, v in report["variants"].items():
        mine = [r for r in rows if r["variant"] == name_]
        low, high = v["accuracy_ci"]
        assert low <= v["accuracy"] <= high
        assert v["vs_best_baseline"]["diff"] == pytest.approx(v["accuracy"] - report["baselines"]["best"]["accuracy"])
        if any(r["extracted"] for r in mine):
            low, high = v["accuracy_when_extracted_ci"]
            assert low <= v["accuracy_when_extracted"] <= high


def test_samples_mode_reports_pass_at_k(adapter_dir, files, in_tmp, capsys):
    """`eval --samples 4`: every item sampled 4 times per variant; each item's pass@k follows from its count of
    right samples by the unbiased estimator, the summary averages them, and pass@1 <= pass@4."""
    from medreason.stats import pass_at_k

    code = main(
        ["eval", "--adapter", str(adapter_dir), "--mode", "generate", "--samples", "4", "--mcq", str(files["five"]),
         "--max-new-tokens", "6", "--batch-size", "4", "--run-name", "samples"]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0 and "pass@1" in out and "pass@4" in out
    report = json.loads((in_tmp / "results" / "samples" / "eval.json").read_text())
    rows = _read_jsonl(in_tmp / "results" / "samples" / "eval_items.jsonl")
    assert len(rows) == 2 * 5 and all(r["samples"] == 4 and len(r["extracted"]) == 4 for r in rows)
    for r in rows:
        assert r["pass@4"] == pass_at_k(4, r["right"], 4) and r["correct"] == r["right"] / 4
    for name, v in report["variants"].items():
        mine = [r for r in rows if r["variant"] == name]
        assert v["pass@1"] == pytest.approx(sum(r["pass@1"] for r in mine) / 5)
        assert v["pass@4"] == pytest.approx(sum(r["pass@4"] for r in mine) / 5) and v["pass@1"] <= v["pass@4"]
    capsys.readouterr()
    assert main(["eval", "--adapter", str(adapter_dir), "--mode", "generate", "--samples", "1"]) == 2
    assert "--samples must be at least 2" in capsys.readouterr().err


def test_base_variant_is_the_plain_base_model(adapter_dir, tiny_model_dir, files):
    """adapter_off() gives what the base model alone generates, token for token."""
    from medreason.evaluate import evaluate

    with_adapter = evaluate(
        str(adapter_dir),
        mode="generate",
        mcq=str(files["five"]),
        max_new_tokens=5,
        batch_size=5,
        run_name="pair",
        cache=False,
    )
    alone = evaluate(
        None,
        model=str(tiny_model_dir),
        mode="generate",
        mcq=str(files["five"]),
        max_new_tokens=5,
        batch_size=5,
        run_name="alone",
        cache=False,
    )
    assert set(alone["variants"]) == {"base"} and "paired" not in alone
    pair_rows = [
        r for r in _read_jsonl(__import__("pathlib").Path(with_adapter["items_path"])) if r["variant"] == "base"
    ]
    alone_rows = _read_jsonl(__import__("pathlib").Path(alone["items_path"]))
    assert [r["output"] for r in pair_rows] == [r["output"] for r in alone_rows]


def test_cache_reuses_answers(adapter_dir, files, monkeypatch):
    import medreason.decode
    from medreason import answers
    from medreason import evaluate as ev

    first = ev.evaluate(
        str(adapter_dir), mode="generate", mcq=str(files["pubmedqa"]), max_new_tokens=4, batch_size=3, run_name="c1"
    )
    assert list((answers.CACHE_DIR).glob("*.jsonl"))

    def no_generation(*a, **k):
        raise AssertionError("generated although every answer is cached")

    monkeypatch.setattr(medreason.decode, "decode", no_generation)
    again = ev.evaluate(
        str(adapter_dir), mode="generate", mcq=str(files["pubmedqa"]), max_new_tokens=4, batch_size=1, run_name="c2"
    )
    assert _read_jsonl(__import__("pathlib").Path(again["items_path"])) == _read_jsonl(
        __import__("pathlib").Path(first["items_path"])
    )
    # another budget is another setting: not served from the cache
    with pytest.raises(AssertionError, match="generated although"):
        ev.evaluate(str(adapter_dir), mode="generate", mcq=str(files["pubmedqa"]), max_new_tokens=5, run_name="c3")
    with pytest.raises(AssertionError, match="generated although"):  # so is another repetition penalty
        ev.evaluate(
            str(adapter_dir),
            mode="generate",
            mcq=str(files["pubmedqa"]),
            max_new_tokens=4,
            repetition_penalty=1.1,
            run_name="c4",
        )


def test_limit_is_stratified(adapter_dir, in_tmp):
    from medreason.evaluate import evaluate
    from medreason.mcq import bundled_split, stratified_subset

    report = evaluate(
        str(adapter_dir), mode="generate", limit=18, max_new_tokens=2, batch_size=9, run_name="strat", cache=False
    )
    expected = stratified_subset(bundled_split("heldout"), 18, seed=0)
    assert report["groups"] == {g: 1 for g in sorted({i.group for i in expected})}  # one per specialty
    rows = _read_jsonl(in_tmp / "results" / "strat" / "eval_items.jsonl")
    assert [r["id"] for r in rows if r["variant"] == "base"] == [i.id for i in expected]


def test_loglik_mode_any_option_count(adapter_dir, files, in_tmp, capsys):
    code = main(
        [
            "eval",
            "--adapter",
            str(adapter_dir),
            "--mode",
            "loglik",
            "--mcq",
            str(files["five"]),
            "--batch-size",
            "4",
            "--run-name",
            "ll",
            "--limit",
            "4",
        ]
    )
    assert code == 0 and "chance level" in capsys.readouterr().out
    report = json.loads((in_tmp / "results" / "ll" / "eval.json").read_text())
    rows = _read_jsonl(in_tmp / "results" / "ll" / "eval_items.jsonl")
    assert report["n_mcq"] == 4 and len(rows) == 8
    for r in rows:
        assert len(r["logliks"]) == 5
        assert r["extracted"] == "ABCDE"[max(range(5), key=r["logliks"].__getitem__)]
    for name, v in report["variants"].items():
        mine = [r["correct"] for r in rows if r["variant"] == name]
        assert v["accuracy"] == pytest.approx(sum(mine) / 4) == pytest.approx(v["tasks"]["medreason_mcq"]["acc"])
        assert v["test_loss"] > 0
        assert "accuracy_when_extracted_ci" not in v and v["vs_best_baseline"]["rule"] in report["baselines"]


def test_loglik_chat_and_free_labels(adapter_dir, files, in_tmp):
    from medreason.evaluate import evaluate

    evaluate(str(adapter_dir), mode="loglik", mcq=str(files["pubmedqa"]), run_name="p", batch_size=3)
    chat = evaluate(str(adapter_dir), mode="loglik", mcq=str(files["pubmedqa"]), chat=True, run_name="q", batch_size=3)
    assert chat["settings"]["chat"] is True
    p_rows = _read_jsonl(in_tmp / "results" / "p" / "eval_items.jsonl")
    c_rows = _read_jsonl(in_tmp / "results" / "q" / "eval_items.jsonl")
    assert all(r["extracted"] in ("yes", "no", "maybe") and len(r["logliks"]) == 3 for r in p_rows + c_rows)
    assert [r["logliks"] for r in p_rows] != [r["logliks"] for r in c_rows]  # the template changes the context


@pytest.mark.parametrize(
    "row, message",
    [
        (
            {"question": "Q?", "options": {"A": "x", "C": "y"}, "answer": "A"},
            'line 2: field "options" must map the letters',
        ),
        ({"question": "Q?", "options": ["yes", "no"], "answer": "perhaps"}, "line 2: field \"answer\" is 'perhaps'"),
    ],
)
def test_bad_row_exits_2_with_one_line_before_loading(in_tmp, capsys, monkeypatch, row, message):
    import medreason.session

    def no_model(*a, **k):
        raise AssertionError("a model was loaded for a bad file")

    monkeypatch.setattr(medreason.session, "load_for_inference", no_model)
    path = in_tmp / "bad.jsonl"
    path.write_text(json.dumps(FIVE[0]) + "\n" + json.dumps(row) + "\n")
    code = main(["eval", "--mode", "generate", "--mcq", str(path)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and message in err and str(path) in err, err


def test_scores_from_outputs_without_a_model():
    """Accuracy, extraction rate, lengths and truncation from given outputs (no generation)."""
    from medreason.mcq import parse_row
    from medreason.modes import grade_row, summarize_generated

    items = [parse_row(r, n, "t") for n, r in enumerate(FIVE[:4], 1)]
    outputs = [
        {"output": "<think>x</think>\nThe answer is D.", "tokens": 10, "truncated": False},
        {"output": "<think>ballooning... maybe A or", "tokens": 64, "truncated": True},
        {"output": "Answer: A", "tokens": 5, "truncated": False},
        {"output": "IM epinephrine", "tokens": 3, "truncated": False},
    ]
    rows = [grade_row(item, out, "adapter") for item, out in zip(items, outputs)]
    assert [r["extracted"] for r in rows] == ["D", None, "A", "A"]
    assert [r["correct"] for r in rows] == [True, False, False, True]
    s = summarize_generated(rows, 64)
    assert (
        s["accuracy"] == 0.5 and s["extraction_rate"] == 0.75 and s["accuracy_when_extracted"] == pytest.approx(2 / 3)
    )
    assert s["tokens_median"] == 7.5 and s["truncation_rate"] == 0.25
    assert s["accuracy_by_group"]["Cardiology"] == {"n": 2, "correct": 1, "accuracy": 0.5}


def test_readme_conversion_of_medqa_and_pubmedqa(tmp_path, monkeypatch):
    """The README's pandas lines, run on files shaped like MedQA-USMLE's US/test.jsonl and PubMedQA's
    ori_pqal.json (made up here: nothing is downloaded), give files that load_benchmark accepts."""
    import re
    from pathlib import Path

    from medreason.mcq import load_benchmark

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    block = next(b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if "MedQA-USMLE" in b)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "US").mkdir()
    medqa = [
        {
            "question": "A 30-year-old has fatigue and a low ferritin. Most likely cause?",
            "answer": "Iron deficiency",
            "options": {
                "A": "B12 deficiency",
                "B": "Iron deficiency",
                "C": "Thalassemia",
                "D": "Hemolysis",
                "E": "Folate deficiency",
            },
            "meta_info": "step1",
            "answer_idx": "B",
        },
        {
            "question": "Drug of choice for absence seizures in a child?",
            "answer": "Ethosuximide",
            "options": {
                "A": "Phenytoin",
                "B": "Carbamazepine",
                "C": "Ethosuximide",
                "D": "Gabapentin",
                "E": "Tiagabine",
            },
            "meta_info": "step2&3",
            "answer_idx": "C",
        },
    ]
    (tmp_path / "US" / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in medqa))
    pq = {
        "21645374": {
            "QUESTION": "Do statins reduce stroke recurrence?",
            "CONTEXTS": ["Background.", "Results."],
            "LABELS": ["BACKGROUND", "RESULTS"],
            "final_decision": "yes",
            "LONG_ANSWER": "They do.",
        },
        "16418930": {
            "QUESTION": "Is the score useful?",
            "CONTEXTS": ["Methods."],
            "LABELS": ["METHODS"],
            "final_decision": "maybe",
            "LONG_ANSWER": "Unclear.",
        },
    }
    (tmp_path / "ori_pqal.json").write_text(json.dumps(pq))
    exec(compile(block, "README.md", "exec"), {})
    five = load_benchmark(tmp_path / "medqa.jsonl")
    assert [(i.id, list(i.options), i.answer, i.group) for i in five] == [
        ("medqa-0", list("ABCDE"), "B", "step1"),
        ("medqa-1", list("ABCDE"), "C", "step2&3"),
    ]
    ynm = load_benchmark(tmp_path / "pubmedqa.jsonl")
    assert [(i.id, i.answer, i.context) for i in ynm] == [
        ("21645374", "yes", "Background. Results."),
        ("16418930", "maybe", "Methods."),
    ]
    assert all(list(i.options) == ["yes", "no", "maybe"] for i in ynm)


# --------------------------------------------------------------------------------------------- the cache key
# issue 32, "silent substitution": the generation cache served answers of another model. Each hole of its key, one
# test: the cache file an evaluation reads must change when what decides the answers changes.


def _session(base, adapter=None):
    from types import SimpleNamespace

    import torch

    return SimpleNamespace(model=torch.nn.Linear(1, 1), base_model=str(base), adapter=str(adapter) if adapter else None)


def _cache_file(session, use_adapter=True):
    from medreason.answers import AnswerCache
    from medreason.decode import Decoding

    return AnswerCache(session, use_adapter, Decoding(max_new_tokens=8)).path


def _flip_last_byte(path):
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))


def test_silent_substitution_cache_a_stray_bin_hid_a_changed_safetensors(adapter_dir, tiny_model_dir, tmp_path):
    """The key hashed the first adapter_model.* in sorted order: a stray .bin hid a retrained .safetensors."""
    import shutil

    adapter = shutil.copytree(adapter_dir, tmp_path / "adapter")
    (adapter / "adapter_model.bin").write_bytes(b"a stray file from another tool")
    before = _cache_file(_session(tiny_model_dir, adapter))
    assert _cache_file(_session(tiny_model_dir, adapter)) == before  # the same files: the same cache
    _flip_last_byte(adapter / "adapter_model.safetensors")
    assert _cache_file(_session(tiny_model_dir, adapter)) != before


def test_silent_substitution_cache_changed_base_weights(tiny_model_dir, tmp_path):
    """The base model's weights were not in the key: changed base weights were served the old answers."""
    import shutil

    base = shutil.copytree(tiny_model_dir, tmp_path / "base")
    before = _cache_file(_session(base), use_adapter=False)
    assert _cache_file(_session(base), use_adapter=False) == before
    _flip_last_byte(base / "model.safetensors")
    assert _cache_file(_session(base), use_adapter=False) != before


def test_silent_substitution_cache_gguf_copy_is_not_the_hub_weights(tiny_model_dir, tmp_path, monkeypatch):
    """Under one model id, the bf16 copy converted from the offline Q4_1 GGUF and the Hub's weights shared a key."""
    import shutil

    import huggingface_hub.constants

    from medreason.models import DEFAULT_MODEL, resolve_model

    monkeypatch.setenv("MEDREASON_CACHE", str(tmp_path / "medreason"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    shutil.copytree(tiny_model_dir, tmp_path / "medreason" / "models" / DEFAULT_MODEL.split("/")[-1])
    assert resolve_model(DEFAULT_MODEL).kind == "cache"
    converted = _cache_file(_session(DEFAULT_MODEL), use_adapter=False)
    repo = tmp_path / "hf" / f"models--{DEFAULT_MODEL.replace('/', '--')}"
    shutil.copytree(tiny_model_dir, repo / "snapshots" / "0123abcd")  # the same bytes, from the Hub this time
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    assert resolve_model(DEFAULT_MODEL).kind == "hf-cache"
    assert _cache_file(_session(DEFAULT_MODEL), use_adapter=False) != converted
