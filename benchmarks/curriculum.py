"""The CPU curriculum, measured as one arc: what SFT teaches (a randomized taught/untaught experiment on the bundled
fact set), what it cannot teach, how the number of phrasings matters, LoRA against full fine-tuning, and when GRPO
has something to sharpen (pass@k before RL, then pass@1 before and after).

Usage (from the repository root; hours on 2 cores; everything trained or decoded is reused when run again):

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/curriculum.py                     # every phase
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/curriculum.py --phases knowledge  # one phase (knowledge, grpo)
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/curriculum.py --pilot p4 --facts_repeats 4   # record a pilot

Phases:
- **knowledge**: the facts recipe (configs/smollm2-135m-facts-cpu.yaml) trains one arm per design choice; each
  model is read three ways on all 144 facts (medreason.knowledge: open recall, the held-out MCQ in generate mode at
  the evaluation budget, the same MCQ by log-likelihood with the chat template), and on the old held-out benchmark
  (forgetting). The effect of teaching is a difference in differences against the untaught half, with a bootstrap
  interval and a permutation p-value, and McNemar's test per half. Arms: `lora` (the recipe), `facts_only` (no
  MCQ-format set: knowing without choosing), `dose1` (one statement per fact, as many exposures), `full` (every
  weight trained). The base model is checked for balance between the halves (randomization check), and read with
  each fact's definition in its prompt (the retrieval reference).
- **grpo**: pass@1, pass@4 and pass@8 (8 samples, unbiased estimator) of the SFT adapter on the GRPO pool (the
  taught facts' second questions); its greedy accuracy on the held-out questions; a power calculation; the GRPO
  recipe (configs/smollm2-135m-grpo-cpu.yaml); pass@1 before and after on the taught and untaught held-out
  questions, greedy (McNemar: greedy accuracy is pass@1 at temperature 0; the sampled pass@1 of eight samples a
  question, before and after, is left out: on 2 cores it doubles the phase's time).

Writes results/benchmarks/curriculum.json (the chapters glue every figure from it), with the machine, the command
and the sha256 of each recipe file (a chapter refuses a table measured with other recipes).
"""

from __future__ import annotations

import argparse
import gc
import json
import shlex
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from common import load_average, machine, now  # noqa: E402

FACTS_RECIPE = "configs/smollm2-135m-facts-cpu.yaml"
GRPO_RECIPE = "configs/smollm2-135m-grpo-cpu.yaml"
OUT = ROOT / "results" / "benchmarks" / "curriculum.json"
READOUTS = ("recall", "generate", "loglik")
# each arm of the knowledge experiment: the facts recipe with these overrides (its adapter goes to its own folder)
ARMS = {
    "lora": [],
    "facts_only": ["--dataset", "bundled-facts"],
    "dose1": ["--facts_statements", "1"],  # repeated 4x as often below: the same number of exposures
    "full": ["--use_peft", "false", "--learning_rate", "1e-4"],
}
SAMPLES = 8
# the file's top-level keys
KEYS = (
    "benchmark", "date", "command", "machine", "load_average_before", "load_average_after", "recipes",
    "recipe_sha256", "knowledge", "grpo",
)  # fmt: skip


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--phases", default="knowledge,grpo")
    p.add_argument("--arms", default=",".join(ARMS))
    p.add_argument("--pilot", default=None, help="train the facts recipe with the given overrides, record recall")
    p.add_argument("--out", default=str(OUT))
    args, rest = p.parse_known_args(argv)
    args.overrides = rest
    return args


# --------------------------------------------------------------------------------------------- reading a model


def read_model(session, facts, label: str, retrieval: bool = False) -> dict:
    """{variant: {readout: rows}} for the session's variants (base, and adapter when it has one): open recall,
    the held-out MCQ in generate mode and by log-likelihood with the chat template, and the old held-out benchmark
    by log-likelihood (forgetting). `retrieval`: the base model with each fact's definition before the question."""
    from medreason.evaluate import evaluate
    from medreason.knowledge import items, recall
    from medreason.modes import GenerateMode, LoglikMode

    variants = ["base"] + (["adapter"] if session.adapter and not retrieval else [])
    out = {v: {} for v in variants}
    for v in variants:
        out[v]["recall"] = recall(session, facts, use_adapter=v == "adapter", retrieval=retrieval)
    questions = items(facts, retrieval=retrieval)
    suffix = "-retrieval" if retrieval else ""
    for readout, mode in (("generate", GenerateMode(max_new_tokens=256)), ("loglik", LoglikMode(chat=True))):
        result = evaluate(
            session=session,
            items=questions,
            benchmark="bundled facts",
            mode=mode,
            run_name=f"curriculum-{label}-{readout}{suffix}",
            force=True,
        )
        rows = [json.loads(line) for line in Path(result["items_path"]).read_text().splitlines()]
        for v in variants:
            out[v][readout] = [r for r in rows if r["variant"] == v]
    if not retrieval:
        old = evaluate(
            session=session,
            split="heldout",
            mode=LoglikMode(chat=True),
            run_name=f"curriculum-{label}-heldout",
            force=True,
        )
        rows = [json.loads(line) for line in Path(old["items_path"]).read_text().splitlines()]
        for v in variants:
            out[v]["old_heldout"] = [r for r in rows if r["variant"] == v]
    return out


def accuracy(rows: list[dict]) -> float:
    return sum(float(r["correct"]) for r in rows) / len(rows)


def randomization(base: dict, taught: set[str]) -> dict:
    """The base model on the two halves, before any training: a permutation test of the difference (the halves
    were drawn at random, so a difference here is chance)."""
    from medreason.stats import diff_in_diff

    out = {}
    for readout in READOUTS:
        rows = base[readout]
        t = [float(r["correct"]) for r in rows if r["id"].split(":")[0] in taught]
        u = [float(r["correct"]) for r in rows if r["id"].split(":")[0] not in taught]
        # the difference in differences against an all-zero "before" is the plain difference of the halves
        test = diff_in_diff([0.0] * len(t), t, [0.0] * len(u), u)
        out[readout] = {
            "taught": sum(t) / len(t),
            "untaught": sum(u) / len(u),
            "diff": test["effect"],
            "ci_low": test["ci_low"],
            "ci_high": test["ci_high"],
            "p_value": test["p_value"],
        }
    return out


def intrusions(rows: list[dict], facts, taught: set[str]) -> list[dict]:
    """For each untaught fact's recall answer: whether it names a taught fact's key term instead (a model that
    comes to prefer the answers it was taught, right or wrong, says them where they do not belong)."""
    from medreason.facts import mentions

    taught_names = [n for f in facts if f.id in taught for n in f.names]
    return [
        {"id": r["id"], "correct": any(mentions(r["answer"], n) for n in taught_names)}
        for r in rows
        if r["id"] not in taught
    ]


def paired_on(rows_a: list[dict], rows_b: list[dict], keep: set[str] | None = None) -> dict:
    """b minus a on the items both answered (by id; only facts in `keep`): McNemar for 0/1, sign-flip otherwise."""
    from medreason.stats import paired_comparison, paired_values

    a = {r["id"]: r["correct"] for r in rows_a if keep is None or r["id"].split(":")[0] in keep}
    b = {r["id"]: r["correct"] for r in rows_b if keep is None or r["id"].split(":")[0] in keep}
    ids = [i for i in a if i in b]
    left, right = [a[i] for i in ids], [b[i] for i in ids]
    if all(isinstance(x, bool) for x in left + right):
        return paired_comparison(left, right)
    return paired_values(left, right)


# --------------------------------------------------------------------------------------------- the phases


def knowledge(args, report: dict) -> None:
    from medreason.config import parse_recipe
    from medreason.facts import assign_halves, load_facts
    from medreason.knowledge import effect
    from medreason.session import load_for_inference
    from medreason.train import ensure_adapter

    facts_args, facts_cfg, _ = parse_recipe(["--config", FACTS_RECIPE])
    facts = load_facts()
    halves = assign_halves(facts, facts_args.facts_seed)
    taught = {f.id for f in halves["taught"]}
    section = report.setdefault("knowledge", {})
    section |= {
        "seed": facts_args.facts_seed,
        "facts": len(facts),
        "taught": sorted(taught),
        "n_taught": len(taught),
        "n_untaught": len(facts) - len(taught),
        "repeats": facts_args.facts_repeats,
        "statements": facts_args.facts_statements,
    }
    arms = section.setdefault("arms", {})
    base = None
    for name in [a for a in args.arms.split(",") if a]:
        overrides = [*ARMS[name]] + [
            "--adapter_root",
            f"lora_adapter/facts-{name}" if name != "lora" else facts_args.adapter_root,
            "--output_dir",
            f"results/smollm2-135m-facts-cpu-{name}" if name != "lora" else facts_cfg.output_dir,
        ]
        if name == "dose1":
            overrides += ["--facts_repeats", str(facts_args.facts_repeats * facts_args.facts_statements)]
        start = time.time()
        folder = ensure_adapter(FACTS_RECIPE, overrides)
        trained_s = time.time() - start
        full = name == "full"
        session = load_for_inference(None, model=str(folder)) if full else load_for_inference(str(folder))
        measured = read_model(session, facts, name)
        if base is None and not full:
            base = measured["base"]
            section["randomization"] = randomization(base, taught)
            section["base"] = {r: accuracy(base[r]) for r in (*READOUTS, "old_heldout")}
        tuned = measured["base" if full else "adapter"]
        arms[name] = {
            "command": report["command"],
            "date": now(),
            "machine": report["machine"],
            "overrides": overrides,
            "train_seconds_if_trained": round(trained_s, 1),
            "effect": {r: effect(base[r], tuned[r], taught) for r in READOUTS},
            "old_heldout": paired_on(base["old_heldout"], tuned["old_heldout"]),
            # untaught recall answers naming a taught key term, before and after (b: stopped, c: started)
            "intrusions": paired_on(
                intrusions(base["recall"], facts, taught), intrusions(tuned["recall"], facts, taught)
            ),
            "accuracy": {r: accuracy(tuned[r]) for r in (*READOUTS, "old_heldout")},
        }
        arms[name]["rows"] = {r: [{k: x[k] for k in ("id", "correct")} for x in tuned[r]] for r in READOUTS}
        del session
        gc.collect()
        write(args, report)
    if base is not None and "lora" in args.arms.split(","):  # the reference, read once with the recipe's arm
        session = load_for_inference(str(ensure_adapter(FACTS_RECIPE)))
        retrieval = read_model(session, facts, "retrieval", retrieval=True)["base"]
        section["retrieval"] = {
            r: {"accuracy": accuracy(retrieval[r]), **effect(base[r], retrieval[r], taught)} for r in READOUTS
        }
        del session
        gc.collect()
        section["base_rows"] = {r: [{k: x[k] for k in ("id", "correct")} for x in base[r]] for r in READOUTS}
    if "lora" in arms and "dose1" in arms:  # four statements against one, on the taught facts, fact by fact
        section["dose"] = {r: paired_on(arms["dose1"]["rows"][r], arms["lora"]["rows"][r], taught) for r in READOUTS}
    if "lora" in arms and "full" in arms:
        section["capacity"] = {r: paired_on(arms["lora"]["rows"][r], arms["full"]["rows"][r], taught) for r in READOUTS}


def grpo(args, report: dict) -> None:
    from medreason.config import parse_recipe
    from medreason.evaluate import evaluate
    from medreason.facts import assign_halves, load_facts
    from medreason.knowledge import items
    from medreason.recipes.grpo import rl_items
    from medreason.session import load_for_inference
    from medreason.stats import detectable_gain
    from medreason.train import ensure_adapter

    g_args, g_cfg, _ = parse_recipe(["--config", GRPO_RECIPE])
    facts = load_facts()
    taught_facts = assign_halves(facts, g_args.facts_seed)["taught"]
    taught = {f.id for f in taught_facts}
    pool, _ = rl_items(g_args.dataset, g_args.facts_seed)
    section = report.setdefault("grpo", {})
    sft = load_for_inference(str(ensure_adapter(FACTS_RECIPE)))
    sampled = {"samples": SAMPLES, "temperature": 1.0, "max_new_tokens": g_cfg.max_completion_length}
    before_pool = evaluate(
        session=sft,
        items=pool,
        benchmark="GRPO pool",
        mode="generate",
        run_name="curriculum-passk-pool",
        force=True,
        **sampled,
    )
    section["pass_at_k_pool"] = {
        v: {k: x[k] for k in x if k.startswith("pass@") or k in ("extraction_rate", "truncation_rate")}
        for v, x in before_pool["variants"].items()
    }
    heldout = items(facts)
    greedy_sft = evaluate(
        session=sft,
        items=heldout,
        benchmark="bundled facts",
        mode="generate",
        max_new_tokens=g_cfg.max_completion_length,
        run_name="curriculum-grpo-before",
        force=True,
    )
    adapter = before_pool["variants"]["adapter"]
    n_taught = len(taught)
    p1 = sum(float(r["correct"]) for r in _rows(greedy_sft, "adapter") if r["id"].split(":")[0] in taught) / n_taught
    section["power"] = {
        "n_items": n_taught,
        "pass_at_1_pool": adapter["pass@1"],
        "pass_at_8_pool": adapter[f"pass@{SAMPLES}"],
        "room": adapter[f"pass@{SAMPLES}"] - adapter["pass@1"],
        "greedy_accuracy_taught": p1,
        "detectable_gain_80": detectable_gain(n_taught, p_loss=0.03),
        "method": "McNemar, two-sided alpha 0.05, power 0.8, with 3 % of items turning wrong (Connor 1987)",
    }
    write(args, report)  # pass@k is kept even if the GRPO run below is interrupted
    del sft
    gc.collect()
    start = time.time()
    after_dir = ensure_adapter(GRPO_RECIPE)
    section["train_seconds_if_trained"] = round(time.time() - start, 1)
    section["steps"] = g_cfg.max_steps
    tuned = load_for_inference(str(after_dir))
    greedy_after = evaluate(
        session=tuned,
        items=heldout,
        benchmark="bundled facts",
        mode="generate",
        max_new_tokens=g_cfg.max_completion_length,
        run_name="curriculum-grpo-after",
        force=True,
    )
    untaught = {f.id for f in facts} - taught
    section["before_after"] = {
        half: {"greedy": paired_on(_rows(greedy_sft, "adapter"), _rows(greedy_after, "adapter"), keep)}
        for half, keep in (("taught", taught), ("untaught", untaught))
    }
    from medreason.adapter import read_adapter

    section["signal"] = {k: v for k, v in read_adapter(after_dir).get("signal", {}).items() if k != "per_step"}
    section["per_step"] = read_adapter(after_dir).get("signal", {}).get("per_step")


def _rows(result: dict, variant: str) -> list[dict]:
    rows = [json.loads(line) for line in Path(result["items_path"]).read_text().splitlines()]
    return [r for r in rows if r["variant"] == variant]


def pilot(args, report: dict) -> None:
    """One pilot of the facts recipe: trained with the overrides, read by open recall (the quickest readout) in
    the held-out wording and in the question-answer statement's own wording (memorised, word for word)."""
    from medreason.facts import assign_halves, load_facts
    from medreason.knowledge import effect, recall
    from medreason.session import load_for_inference
    from medreason.train import train

    facts = load_facts()
    folder = Path("results") / "pilots" / args.pilot
    start = time.time()
    result = train(
        [
            "--config",
            FACTS_RECIPE,
            "--output_dir",
            str(folder / "out"),
            "--adapter_root",
            str(folder / "lora"),
            *args.overrides,
        ]
    )
    seconds = time.time() - start
    session = load_for_inference(str(result.adapter_dir))
    taught = {f.id for f in assign_halves(facts, session.meta["data"]["args"]["facts_seed"])["taught"]}
    readouts = {}
    for wording in ("recall", "trained"):
        before = recall(session, facts, use_adapter=False, wording=wording)
        readouts[wording] = effect(before, recall(session, facts, wording=wording), taught)
    pilots = report.setdefault("knowledge", {}).setdefault("pilots", {})
    pilots[args.pilot] = {
        "command": "HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/curriculum.py --pilot "
        + shlex.join([args.pilot, *args.overrides]),
        "resolved": {
            k: session.meta["config"].get(k)
            for k in (
                "dataset",
                "num_train_epochs",
                "learning_rate",
                "facts_statements",
                "facts_repeats",
                "system_prompt",
                "use_peft",
            )
        },
        "train_seconds": round(seconds),
        "steps": result.global_step,
        "recall_heldout_wording": readouts["recall"],
        "recall_trained_wording": readouts["trained"],
    }


def write(args, report: dict) -> None:
    from medreason.io import atomic_write_json

    atomic_write_json(Path(args.out), report)


def main(argv=None) -> int:
    args = parse_args(argv)
    from medreason.distributed import inference_dtype
    from medreason.io import sha256_file

    out = Path(args.out)
    report = json.loads(out.read_text()) if out.is_file() else {}
    report = {k: v for k, v in report.items() if k in KEYS}  # nothing of an older layout survives
    if args.pilot:
        pilot(args, report)
        write(args, report)
        return 0
    report |= {
        "benchmark": "curriculum",
        "date": now(),
        "command": "HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/curriculum.py "
        + shlex.join(argv if argv is not None else sys.argv[1:]),
        "machine": machine(inference_dtype()),
        "load_average_before": load_average(),
        "recipes": {"facts": FACTS_RECIPE, "grpo": GRPO_RECIPE},
        "recipe_sha256": {"facts": sha256_file(FACTS_RECIPE), "grpo": sha256_file(GRPO_RECIPE)},
    }
    phases = [p for p in args.phases.split(",") if p]
    for phase in phases:  # each phase keeps the command, the date and the machine it was measured with
        if phase == "grpo":
            report[phase] = {}  # nothing of an earlier GRPO run survives: it depends on the adapter of this one
        report.setdefault(phase, {}).update(command=report["command"], date=report["date"], machine=report["machine"])
    if "knowledge" in phases:
        knowledge(args, report)
        write(args, report)
    if "grpo" in phases:
        grpo(args, report)
    report["load_average_after"] = load_average()
    write(args, report)
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
