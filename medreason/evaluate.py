"""`medreason eval`: what fine-tuning changed, measured. Base model vs base + adapter, one copy of the weights,
on the same items, compared as pairs.

    medreason eval --adapter lora_adapter/SmolLM2-135M-Instruct --mode generate      # let it think, extract, score
    medreason eval --adapter DIR --mode generate --mcq my_exam.jsonl --max-new-tokens 512 --limit 100
    medreason eval --adapter DIR --mode loglik [--chat]                             # lm-eval, option log-likelihoods
    medreason eval --adapter DIR --tasks medreason_mcq,multimedqa                   # + the harness's tasks (Hub)

    from medreason.evaluate import evaluate
    report = evaluate("lora_adapter/SmolLM2-135M-Instruct", mode="generate", limit=48, max_new_tokens=192)

Two modes, for two questions:
- **generate**: the model gets the chat template, the system prompt and the options (medreason.mcq.prompt_messages),
  thinks greedily within `max_new_tokens`, batched with the KV cache; medreason.extract.extract_choice reads the
  option it chose. Per variant: accuracy, extraction rate, output length (median, p95 tokens), truncation rate
  (hit the budget). This is what a reasoning model is for, and the only mode that sees what SFT taught.
- **loglik**: EleutherAI's lm-evaluation-harness scores each option label after "Question ... Answer:" (raw, as
  published harness numbers are, or with `--chat` through the chat template): what the model *knows* about the
  options, independent of whether it can state an answer. It also reports held-out loss on the adapter's test split.
Both: chance (1/k per item, averaged), accuracy per group, and for base vs adapter the paired difference with a
bootstrap 95 % interval and McNemar's exact p-value (medreason.stats). `--limit` draws a subset stratified by group
with a fixed seed. Every item goes to results/<run>/eval_items.jsonl, the summary to results/<run>/eval.json and
MLflow (experiment `medreason-eval`).

Generated answers are cached under results/cache/generate/, keyed by the model (medreason.fingerprint: the sha256
of every file the base model and the adapter load, where the base weights came from, dtype and device), the
rendered prompt, the decoding settings and the library versions, so the GRPO and evaluation chapters never
generate the same answers twice, and a changed model never reads another's.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from contextlib import nullcontext
from pathlib import Path

from medreason.errors import UserError
from medreason.guards import eval_results
from medreason.harness import (
    BUNDLED_TASK,
    HUB_TASKS,
    available_hub_tasks,
    loglik_choices,
    mcq_task_config,
    summarize_loglik,
)
from medreason.io import atomic_open, atomic_write_json
from medreason.progress import progress
from medreason.report import baselines_line, log_mlflow, table
from medreason.scoring import heldout_loss

# moved out of this module; importable from here as before
__all__ = [
    "evaluate",
    "generate_outputs",
    "score_outputs",
    "summarize_generate",
    "mcq_prompts",
    "training_data",
    "heldout_loss",
    "loglik_choices",
    "mcq_task_config",
    "summarize_loglik",
    "table",
    "baselines_line",
    "BUNDLED_TASK",
    "HUB_TASKS",
]

log = logging.getLogger(__name__)

MODES = ("generate", "loglik")
CACHE_DIR = Path("results") / "cache" / "generate"


# --------------------------------------------------------------------------------------------- entry point


def evaluate(
    adapter: str | None = None,
    *,
    model: str | None = None,
    mcq: str | None = None,
    split: str = "heldout",
    mode: str = "loglik",
    tasks: tuple[str, ...] = (BUNDLED_TASK,),
    limit: int | None = None,
    batch_size: int = 8,
    max_new_tokens: int = 256,
    chat: bool = False,
    seed: int = 0,
    run_name: str | None = None,
    session=None,
    cache: bool = True,
    repetition_penalty: float = 1.0,
    force: bool = False,
) -> dict:
    """Evaluate the base model and (when given) the adapter on the same items; write results/<run>/eval.json
    and eval_items.jsonl, log to MLflow. `mcq` is a benchmark file (default: the bundled benchmark's `split`,
    'heldout', 'pool' or 'all'); `limit` draws a stratified subset with `seed`."""
    from medreason.generate import load_for_inference
    from medreason.mcq import SPLITS, bundled_split, chance, group_counts, stratified_subset, trivial_baselines

    # everything about the input fails here, before any model loads
    if mode not in MODES:
        raise UserError(f"mode '{mode}' is unknown: choose {' or '.join(MODES)}")
    if max_new_tokens < 1:
        raise UserError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if batch_size < 1:
        raise UserError(f"batch_size must be at least 1, got {batch_size}")
    if not repetition_penalty > 0:
        raise UserError(f"repetition_penalty must be above 0 (1 is none), got {repetition_penalty}")
    all_items, source = benchmark_items(mcq, split)
    items = stratified_subset(all_items, limit, seed=seed)
    run, owner = eval_results(  # a safe run name, results/<run> no input's and no other adapter's, prompts that fit
        run_name,
        session.adapter if session else adapter,
        session.base_model if session else model,
        mcq,
        items,
        max_new_tokens=max_new_tokens if mode == "generate" else 0,
        force=force,
    )
    hub_tasks = available_hub_tasks(tasks) if mode == "loglik" else []
    session = session or load_for_inference(adapter, model)

    variants = [("base", False)] + ([("adapter", True)] if session.adapter else [])
    results = {
        "mode": mode,
        "base_model": session.base_model,
        "adapter": session.adapter,
        "benchmark": source,
        "n_mcq": len(items),
        "n_benchmark": len(all_items),
        "limit": limit,
        "seed": seed,
        "chance": chance(items),
        "groups": group_counts(items),
        "variants": {},
        "owner": owner,  # whose results these are: another adapter's evaluation does not replace them silently
    }
    # what needs no knowledge, from the benchmark file alone; the majority label comes from the other split
    prior = bundled_split(next(s for s in SPLITS if s != split)) if mcq is None and split in SPLITS else None
    results["baselines"] = trivial_baselines(items, prior=prior)
    if mode == "generate":
        results["settings"] = {
            "max_new_tokens": max_new_tokens,
            "batch_size": batch_size,
            "decoding": "greedy",
            "repetition_penalty": repetition_penalty,
            "system_prompt": session.system_prompt,
            "template": session.template,
        }
    else:
        results["settings"] = {"chat": chat, "batch_size": batch_size}
        test = _test_split(session, limit)
        results["n_test"] = len(test)
    rows = []
    for name, use_adapter in variants:
        with nullcontext() if use_adapter else session.adapter_off():
            if mode == "generate":
                outputs = generate_outputs(
                    session,
                    items,
                    use_adapter=use_adapter,
                    max_new_tokens=max_new_tokens,
                    batch_size=batch_size,
                    cache=cache,
                    repetition_penalty=repetition_penalty,
                )
                scored = score_outputs(items, outputs, name)
                summary = summarize_generate(scored, max_new_tokens)
            else:
                loss = heldout_loss(session.model, session.tokenizer, test, batch_size=batch_size)
                scored, scores = loglik_choices(
                    session, items, name, batch_size=batch_size, chat=chat, hub_tasks=hub_tasks, limit=limit
                )
                summary = {
                    **summarize_loglik(scored),
                    "test_loss": loss,
                    "test_perplexity": math.exp(loss),
                    "tasks": scores,
                }
        rows += scored
        results["variants"][name] = {
            **summary,
            **against_baselines(scored, results["baselines"], generate=mode == "generate"),
        }
        log.info(
            "%s: accuracy %.3f on %d items%s",
            name,
            summary["accuracy"],
            len(scored),
            f", extraction rate {summary['extraction_rate']:.3f}" if mode == "generate" else "",
        )
    if len(variants) == 2:
        results["paired"] = paired_figures(rows)

    folder = Path("results") / run
    write_items(folder / "eval_items.jsonl", rows)
    atomic_write_json(folder / "eval.json", results)
    results["path"] = str(folder / "eval.json")
    results["items_path"] = str(folder / "eval_items.jsonl")
    log_mlflow(results, run, folder / "eval_items.jsonl")
    return results


def benchmark_items(mcq: str | None, split: str = "heldout"):
    """(items, description): a benchmark file (all its items), or the bundled benchmark's split."""
    from medreason.mcq import SPLITS, bundled_split, load_benchmark

    if mcq:
        return load_benchmark(mcq), str(mcq)
    if split == "all":
        return load_benchmark(), "bundled benchmark (all splits)"
    if split not in SPLITS:
        raise UserError(f"split '{split}' is unknown: choose {', '.join(SPLITS)} or all")
    return bundled_split(split), f"bundled benchmark ({split} split)"


def _test_split(session, limit):
    from medreason.data import load_splits

    test = load_splits(**training_data(session))["test"]
    return test if limit is None else test.select(range(min(limit, len(test))))


# --------------------------------------------------------------------------------------------- generate mode


def generate_outputs(
    session,
    items,
    *,
    use_adapter: bool,
    max_new_tokens: int = 256,
    batch_size: int = 8,
    cache: bool = True,
    repetition_penalty: float = 1.0,
) -> list[dict]:
    """{"output", "tokens", "truncated"} per item, in order: greedy, batched (similar prompt lengths together,
    left-padded, KV cache), answers already in the cache reused. The caller's adapter state is what runs:
    call it inside `session.adapter_off()` for the base model."""
    prompts = mcq_prompts(session, items)
    keys = [hashlib.sha256(p.encode()).hexdigest() for p in prompts]
    store = GenerationCache(session, use_adapter, max_new_tokens, repetition_penalty) if cache else None
    done = store.load() if store else {}
    todo = sorted({i for i, k in enumerate(keys) if k not in done}, key=lambda i: len(prompts[i]))
    if len(todo) < len(items):
        log.info("%d of %d answers from the cache %s", len(items) - len(todo), len(items), store.path)
    with progress(total=len(todo), desc=f"generate ({'adapter' if use_adapter else 'base'})", unit="q") as bar:
        for start in range(0, len(todo), batch_size):
            chunk = todo[start : start + batch_size]
            for i, out in zip(
                chunk, generate_batch(session, [prompts[i] for i in chunk], max_new_tokens, repetition_penalty)
            ):
                done[keys[i]] = {**out, "batch_size": len(chunk)}
            if store:  # after every batch: an interrupted run resumes where it stopped
                store.save(done)
            bar.update(len(chunk))
    return [done[k] for k in keys]


def mcq_prompts(session, items) -> list[str]:
    """Each item as generate mode prompts it: the adapter's system prompt and the question with its options,
    through the chat template, ending with the assistant header."""
    from medreason.mcq import prompt_messages

    return [
        session.tokenizer.apply_chat_template(
            prompt_messages(item, session.system_prompt), tokenize=False, add_generation_prompt=True
        )
        for item in items
    ]


def generate_batch(session, prompts: list[str], max_new_tokens: int, repetition_penalty: float = 1.0) -> list[dict]:
    """Greedy continuations of already-templated prompts: {"output", "tokens", "truncated"} each. `tokens` counts
    what was generated up to the end-of-turn token; `truncated` means the budget ran out first."""
    from medreason.generate import generate

    # pure greedy (repetition_penalty 1) by default, as reference evaluations decode. A penalty (`medreason chat`
    # uses 1.1) breaks the loops small models fall into under pure greedy; it also penalises every option label the
    # prompt lists, but all of them alike, so it does not favour one option
    return generate(
        session,
        prompts,
        do_sample=False,
        max_new_tokens=max_new_tokens,
        temperature=None,
        top_p=None,
        top_k=None,
        repetition_penalty=repetition_penalty,
    )


class GenerationCache:
    """Generated answers of one model and decoding setting, by sha256 of the rendered prompt, in one JSONL file
    under results/cache/generate/. The model is named by medreason.fingerprint.generation_key: the sha256 of every
    file the base model and the adapter load from, where the base weights came from, dtype, device, decoding and
    library versions, so a changed or retrained model never reads another's answers. Batch size is not part of
    the key: padding changes greedy outputs only through rounding; each row records its batch size."""

    def __init__(self, session, use_adapter: bool, max_new_tokens: int, repetition_penalty: float = 1.0):
        from medreason.fingerprint import generation_key, key_digest  # every weight file, decoding, versions

        decoding = {"max_new_tokens": max_new_tokens, "decoding": "greedy", "repetition_penalty": repetition_penalty}
        self.key = generation_key(session, use_adapter, decoding)
        self.path = CACHE_DIR / f"{key_digest(self.key)}.jsonl"

    def load(self) -> dict:
        if not self.path.is_file():
            return {}
        done = {}
        for line in self.path.read_text().splitlines():
            try:
                row = json.loads(line)
                done[row["prompt_sha256"]] = {k: row[k] for k in ("output", "tokens", "truncated", "batch_size")}
            except (json.JSONDecodeError, KeyError, TypeError):  # a damaged cache line: that answer is generated again
                continue
        return done

    def save(self, done: dict):
        with atomic_open(self.path) as f:
            for key, row in done.items():
                f.write(json.dumps({"prompt_sha256": key, **row, "model": self.key}, ensure_ascii=False) + "\n")


def score_outputs(items, outputs: list[dict], variant: str) -> list[dict]:
    """One row per item for eval_items.jsonl: the raw output, the extracted label, and whether it is right."""
    from medreason.extract import extract_choice

    rows = []
    for item, out in zip(items, outputs):
        extracted = extract_choice(out["output"], item.options)
        rows.append(
            {
                "id": item.id,
                "group": item.group,
                "variant": variant,
                "answer": item.answer,
                "extracted": extracted,
                "correct": extracted == item.answer,
                "n_options": len(item.options),
                "tokens": out["tokens"],
                "truncated": out["truncated"],
                "output": out["output"],
            }
        )
    return rows


def summarize_generate(rows: list[dict], max_new_tokens: int) -> dict:
    import numpy as np

    from medreason.stats import accuracy_by_group

    tokens = np.array([r["tokens"] for r in rows])
    extracted = [r for r in rows if r["extracted"] is not None]
    return {
        "n": len(rows),
        "accuracy": float(np.mean([r["correct"] for r in rows])),
        "extraction_rate": len(extracted) / len(rows),
        # of the answers that could be read, how many are right: separates "cannot answer" from "answers wrongly"
        "accuracy_when_extracted": (sum(r["correct"] for r in extracted) / len(extracted)) if extracted else None,
        "tokens_median": float(np.median(tokens)),
        "tokens_p95": float(np.percentile(tokens, 95)),
        "truncation_rate": float(np.mean([r["truncated"] for r in rows])),
        "max_new_tokens": max_new_tokens,
        "accuracy_by_group": accuracy_by_group([r["group"] for r in rows], [r["correct"] for r in rows]),
    }


def against_baselines(rows: list[dict], baselines: dict, *, generate: bool) -> dict:
    """Accuracy with its Wilson 95 % interval, and an exact binomial test against the best rule that needs no
    knowledge (medreason.mcq.trivial_baselines); in generate mode also accuracy among the extracted answers with
    its interval, which separates 'cannot state an answer' from 'states a wrong one'."""
    from medreason.stats import against_rate, proportion_ci

    right = sum(bool(r["correct"]) for r in rows)
    best = baselines["best"]
    out = {
        "accuracy_ci": proportion_ci(right, len(rows)),
        "vs_best_baseline": {
            "rule": best["rule"],
            "baseline": best["accuracy"],
            "diff": right / len(rows) - best["accuracy"],
            "p_value": against_rate(right, len(rows), best["accuracy"]),
        },
    }
    if generate:
        extracted = [r for r in rows if r["extracted"] is not None]
        k = sum(bool(r["correct"]) for r in extracted)
        out["accuracy_when_extracted_ci"] = proportion_ci(k, len(extracted)) if extracted else None
        out["vs_best_baseline"]["when_extracted_p_value"] = (
            against_rate(k, len(extracted), best["accuracy"]) if extracted else None
        )
    return out


def paired_figures(rows: list[dict]) -> dict:
    """Adapter minus base on the items both answered: difference, bootstrap interval, McNemar."""
    from medreason.stats import paired_comparison

    by = {v: {r["id"]: r["correct"] for r in rows if r["variant"] == v} for v in ("base", "adapter")}
    ids = [i for i in by["base"] if i in by["adapter"]]
    out = paired_comparison([by["base"][i] for i in ids], [by["adapter"][i] for i in ids])
    out["variant_a"], out["variant_b"] = "base", "adapter"
    return out


def write_items(path: Path, rows: list[dict]):
    with atomic_open(path) as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


# --------------------------------------------------------------------------------------------- the adapter's data


def training_data(session) -> dict:
    """load_splits arguments that rebuild the adapter's own test split: every data argument it was trained with
    (medreason.json "data"), and a check that the file still has the content it was trained on. Without an
    adapter (or for an adapter from before these records), the bundled corpus with the session's template."""
    data = session.meta.get("data") or {}
    if not data.get("args"):
        return {
            "dataset": session.meta.get("dataset") or "bundled",
            "template": session.template,
            "system_prompt": session.system_prompt,
        }
    if data.get("kind") in ("file", "bundled") and data.get("sha256"):
        from medreason.io import sha256_file

        path = Path(data["path"])
        if not path.is_file():
            raise UserError(f"adapter {session.adapter} was trained on {path}, which no longer exists")
        if sha256_file(path) != data["sha256"]:
            raise UserError(
                f"{path} changed since adapter {session.adapter} was trained on it (sha256 differs): "
                f"its test split cannot be rebuilt"
            )
    return {"dataset": data.get("dataset", "bundled"), **data["args"]}


def cli(args) -> int:
    tasks = tuple(t.strip() for t in args.tasks.split(",") if t.strip())
    results = evaluate(
        args.adapter,
        model=args.model,
        mcq=args.mcq,
        split=args.split,
        mode=args.mode,
        tasks=tasks,
        limit=args.limit,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        chat=args.chat,
        seed=args.seed,
        run_name=args.run_name,
        cache=not args.no_cache,
        repetition_penalty=args.repetition_penalty,
        force=args.force,
    )
    print(table(results))
    print(f"written to {results['path']} and {results['items_path']}")
    return 0
