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

Generated answers are cached under results/cache/generate/, keyed by the model (base id, dtype, sha256 of the
adapter weights), the rendered prompt and the decoding settings, so the GRPO and evaluation chapters never
generate the same answers twice.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
from contextlib import nullcontext
from pathlib import Path

from medreason.errors import UserError
from medreason.io import atomic_open, atomic_write_json
from medreason.progress import progress

log = logging.getLogger(__name__)

BUNDLED_TASK = "medreason_mcq"
HUB_TASKS = {
    "multimedqa",
    "medqa_4options",
    "medmcqa",
    "pubmedqa",
    "mmlu_anatomy",
    "mmlu_clinical_knowledge",
    "mmlu_college_biology",
    "mmlu_college_medicine",
    "mmlu_medical_genetics",
    "mmlu_professional_medicine",
}
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
    hub_tasks = _hub_tasks(tasks) if mode == "loglik" else []
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

    run = run_name or (Path(session.adapter).name if session.adapter else "base")
    folder = Path("results") / run
    write_items(folder / "eval_items.jsonl", rows)
    atomic_write_json(folder / "eval.json", results)
    results["path"] = str(folder / "eval.json")
    results["items_path"] = str(folder / "eval_items.jsonl")
    _log_mlflow(results, run, folder / "eval_items.jsonl")
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


def _hub_tasks(tasks) -> list[str]:
    from medreason.models import hub_reachable

    unknown = [t for t in tasks if t != BUNDLED_TASK and t not in HUB_TASKS]
    if unknown:
        raise UserError(f"unknown task '{unknown[0]}': choose {BUNDLED_TASK} or one of {', '.join(sorted(HUB_TASKS))}")
    hub_tasks = [t for t in tasks if t in HUB_TASKS]
    if hub_tasks and not hub_reachable():
        log.warning("the Hub is unreachable: skipping %s (their data lives on the Hub)", ", ".join(hub_tasks))
        hub_tasks = []
    return hub_tasks


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
    under results/cache/generate/. The model is named by its base id, dtype, and the sha256 of the adapter's
    weights (for the adapter variant), so a retrained adapter never reads another's answers. Batch size is not
    part of the key: padding changes greedy outputs only through rounding; each row records its batch size."""

    def __init__(self, session, use_adapter: bool, max_new_tokens: int, repetition_penalty: float = 1.0):
        import transformers

        from medreason.io import sha256_file

        dtype = str(next(session.model.parameters()).dtype)
        weights = None
        if use_adapter and session.adapter:
            files = sorted(Path(session.adapter).glob("adapter_model.*"))
            weights = sha256_file(files[0]) if files else None
        self.key = {
            "base_model": str(session.base_model),
            "dtype": dtype,
            "adapter_sha256": weights,
            "max_new_tokens": max_new_tokens,
            "decoding": "greedy",
            **({"repetition_penalty": repetition_penalty} if repetition_penalty != 1.0 else {}),
            "transformers": transformers.__version__,
        }
        digest = hashlib.sha256(json.dumps(self.key, sort_keys=True).encode()).hexdigest()[:16]
        self.path = CACHE_DIR / f"{digest}.jsonl"

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


# --------------------------------------------------------------------------------------------- held-out loss


def heldout_loss(model, tokenizer, dataset, batch_size: int = 8) -> float:
    """Mean negative log-likelihood per completion token (prompt tokens masked, as in training)."""
    import torch

    from medreason.scoring import labelled_log_softmax

    examples = []
    for ex in dataset:
        prompt_ids = tokenizer.apply_chat_template(
            ex["prompt"], add_generation_prompt=True, tokenize=True, return_dict=True
        )["input_ids"]
        full_ids = tokenizer.apply_chat_template(ex["prompt"] + ex["completion"], tokenize=True, return_dict=True)[
            "input_ids"
        ]
        examples.append((full_ids, len(prompt_ids)))
    examples.sort(key=lambda e: len(e[0]))  # similar lengths together: little padding
    total_nll, total_tokens = 0.0, 0
    device = next(model.parameters()).device
    model.eval()
    with torch.inference_mode(), progress(total=len(examples), desc="held-out loss", unit="ex") as bar:
        for i in range(0, len(examples), batch_size):
            chunk = examples[i : i + batch_size]
            bar.update(len(chunk))
            width = max(len(ids) for ids, _ in chunk)
            input_ids = torch.full((len(chunk), width), tokenizer.pad_token_id, dtype=torch.long)
            attention = torch.zeros((len(chunk), width), dtype=torch.long)
            labels = torch.full((len(chunk), width), -100, dtype=torch.long)
            for j, (ids, n_prompt) in enumerate(chunk):
                input_ids[j, : len(ids)] = torch.tensor(ids)
                attention[j, : len(ids)] = 1
                labels[j, n_prompt : len(ids)] = torch.tensor(ids[n_prompt:])
            # as training's dense head computes them (medreason.scoring)
            log_softmax, targets, mask = labelled_log_softmax(
                model, labels, input_ids=input_ids.to(device), attention_mask=attention.to(device)
            )
            total_nll -= log_softmax.gather(-1, targets[:, None]).sum().item()
            total_tokens += int(mask.sum())
    return total_nll / max(1, total_tokens)


# --------------------------------------------------------------------------------------------- loglik mode


def loglik_task_config(items_path: str | Path) -> dict:
    """An lm-eval task over any items: the bundled task's scoring (resources/lm_eval/medreason_mcq.yaml:
    multiple_choice, acc and acc_norm, a space before each choice) with the prompt, the choices (each item's own
    labels, 2 to 10 of them) and the target read from the fields of a file written by `loglik_choices`."""
    config = mcq_task_config()
    config.update(
        doc_to_text="prompt",
        doc_to_choice="choices",
        doc_to_target="target",
        dataset_kwargs={"data_files": {"test": str(Path(items_path).resolve())}},
    )
    return config


def loglik_choices(
    session, items, variant: str, *, batch_size: int = 8, chat: bool = False, hub_tasks=(), limit: int | None = None
) -> tuple[list[dict], dict]:
    """(one row per item, {task: harness scores}) by log-likelihood of each option's label with lm-eval.
    chat=True renders every prompt through the chat template with the system prompt (the harness's
    apply_chat_template)."""
    import tempfile

    import lm_eval
    from lm_eval.models.huggingface import HFLM

    from medreason.mcq import loglik_prompt

    with tempfile.TemporaryDirectory(prefix="medreason-loglik-") as tmp:
        path = Path(tmp) / "items.jsonl"
        with path.open("w") as f:
            for item in items:
                labels = list(item.options)
                f.write(
                    json.dumps(
                        {
                            "id": item.id,
                            "prompt": loglik_prompt(item),
                            "choices": labels,
                            "target": labels.index(item.answer),
                        },
                        ensure_ascii=False,
                    )
                    + "\n"
                )
        lm = HFLM(pretrained=session.model, tokenizer=session.tokenizer, batch_size=batch_size)
        out = lm_eval.simple_evaluate(
            model=lm,
            tasks=[loglik_task_config(path)] + list(hub_tasks),
            limit=limit if hub_tasks else None,
            log_samples=True,
            bootstrap_iters=1000,
            random_seed=0,
            numpy_random_seed=0,
            torch_random_seed=0,
            fewshot_random_seed=0,
            apply_chat_template=chat,
            system_instruction=session.system_prompt if chat else None,
            task_manager=_task_manager(bool(hub_tasks)),
        )
    scores = {}
    for task, metrics in out["results"].items():
        if "acc,none" in metrics:
            scores[task] = {
                "acc": metrics["acc,none"],
                "acc_stderr": _num(metrics.get("acc_stderr,none")),
                "acc_norm": metrics.get("acc_norm,none"),
                "acc_norm_stderr": _num(metrics.get("acc_norm_stderr,none")),
                "n": out.get("n-samples", {}).get(task, {}).get("effective"),
            }
    by_id = {item.id: item for item in items}
    rows = []
    for sample in sorted(out["samples"][BUNDLED_TASK], key=lambda s: s["doc_id"]):
        item = by_id[sample["doc"]["id"]]
        logliks = [float(r[0]) for r in sample["filtered_resps"]]
        chosen = list(item.options)[max(range(len(logliks)), key=logliks.__getitem__)]
        rows.append(
            {
                "id": item.id,
                "group": item.group,
                "variant": variant,
                "answer": item.answer,
                "extracted": chosen,
                "correct": chosen == item.answer,
                "n_options": len(item.options),
                "logliks": logliks,
            }
        )
    return rows, scores


def summarize_loglik(rows: list[dict]) -> dict:
    from medreason.stats import accuracy_by_group

    correct = [r["correct"] for r in rows]
    return {
        "n": len(rows),
        "accuracy": sum(correct) / len(rows),
        "accuracy_by_group": accuracy_by_group([r["group"] for r in rows], correct),
    }


def mcq_task_config(mcq_path: str | None = None) -> dict:
    """The bundled task (medreason/resources/lm_eval/medreason_mcq.yaml) with its data file resolved: the
    four-option file as the lm_eval command line reads it."""
    import yaml

    from medreason.readers import bundled_path

    config = yaml.safe_load(bundled_path("lm_eval/medreason_mcq.yaml").read_text())
    data = str(Path(mcq_path).resolve()) if mcq_path else str(bundled_path("mcq.jsonl"))
    config["dataset_kwargs"] = {"data_files": {"test": data}}
    return config


@functools.lru_cache(maxsize=2)
def _task_manager(with_harness_tasks: bool):
    """lm-eval's task index, built once per process. Indexing the harness's own tasks reads thousands of
    YAML files (about a minute on 2 cores), so it is skipped when only the bundled task runs (it is
    passed as a config and needs no index)."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_defaults=with_harness_tasks)


def _num(x):
    try:
        return float(x)
    except (TypeError, ValueError):
        return None


# --------------------------------------------------------------------------------------------- output


def table(results: dict) -> str:
    """Base vs adapter, the paired comparison and accuracy per group, as `medreason eval` prints it."""
    generate = results.get("mode") == "generate"
    names = list(results["variants"])
    if generate:
        head = f"{'':<10}{'accuracy':>10}{'extracted':>11}{'acc|extr':>10}{'tokens p50':>12}{'p95':>7}{'truncated':>11}"
        lines = [head]
        for name, v in results["variants"].items():
            ae = v["accuracy_when_extracted"]
            lines.append(
                f"{name:<10}{v['accuracy']:>10.3f}{v['extraction_rate']:>11.3f}"
                f"{(f'{ae:.3f}' if ae is not None else '-'):>10}{v['tokens_median']:>12.0f}"
                f"{v['tokens_p95']:>7.0f}{v['truncation_rate']:>11.3f}"
            )
    else:
        tasks = list(next(iter(results["variants"].values()))["tasks"])
        lines = [
            f"{'':<10}{'accuracy':>10}{'test loss':>11}{'ppl':>12}   " + "   ".join(f"{t} acc ± se" for t in tasks)
        ]
        for name, v in results["variants"].items():
            accs = "   ".join(
                f"{s['acc']:.3f} ± {s['acc_stderr'] or 0:.3f}".rjust(len(t) + 9) for t, s in v["tasks"].items()
            )
            lines.append(
                f"{name:<10}{v['accuracy']:>10.3f}{v['test_loss']:>11.4f}{v['test_perplexity']:>12.6g}   {accs}"
            )  # .6g: <= 11 chars at any size
    penalty = results["settings"].get("repetition_penalty", 1.0)
    how = (
        f"generate, greedy{f' (repetition penalty {penalty:g})' if penalty != 1.0 else ''}, "
        f"{results['settings']['max_new_tokens']} new tokens"
        if generate
        else "log-likelihood" + (" with the chat template" if results["settings"].get("chat") else "")
    )
    lines.append(
        f"chance level (1/k per item, averaged): {results['chance']:.3f}; {results['n_mcq']} items of "
        f"{results['benchmark']}; {how}"
    )
    if "baselines" in results:
        lines.append(baselines_line(results["baselines"]))
        for name, v in results["variants"].items():
            vs = v["vs_best_baseline"]
            low, high = v["accuracy_ci"]
            extra = "; no answer extracted" if generate and not v.get("accuracy_when_extracted_ci") else ""
            if v.get("accuracy_when_extracted_ci"):
                el, eh = v["accuracy_when_extracted_ci"]
                extra = (
                    f"; among extracted {v['accuracy_when_extracted']:.3f} (95% {el:.3f}-{eh:.3f}), "
                    f"p = {vs['when_extracted_p_value']:.3g}"
                )
            lines.append(
                f"{name}: accuracy {v['accuracy']:.3f} (Wilson 95% {low:.3f}-{high:.3f}), "
                f"{vs['diff']:+.3f} vs the best baseline, exact binomial p = {vs['p_value']:.3g}{extra}"
            )
    if "paired" in results:
        p = results["paired"]
        lines.append(
            f"adapter - base: {p['diff']:+.3f} (paired bootstrap 95% interval {p['ci_low']:+.3f} to "
            f"{p['ci_high']:+.3f}); McNemar exact p = {p['p_value']:.3g} "
            f"({p['c']} items only the adapter got right, {p['b']} only the base)"
        )
    groups = results["groups"]
    lines.append("")
    lines.append(f"{'group':<36}{'n':>4}" + "".join(f"{n:>10}" for n in names))
    for g, n in groups.items():
        accs = "".join(f"{results['variants'][v]['accuracy_by_group'][g]['accuracy']:>10.3f}" for v in names)
        lines.append(f"{g[:35]:<36}{n:>4}{accs}")
    return "\n".join(lines)


def baselines_line(b: dict) -> str:
    """The trivial baselines in one line, as `medreason eval` and the book print them."""
    from medreason.mcq import BASELINE_NAMES

    return (
        f"no-knowledge baselines: chance {b['chance']['accuracy']:.3f}, majority label "
        f"{b['majority_label']['label']} {b['majority_label']['accuracy']:.3f} (label from "
        f"{b['majority_label']['label_from']}), best same label {b['same_label']['label']} "
        f"{b['same_label']['accuracy']:.3f} (chosen after seeing the answers), longest option "
        f"{b['longest_option']['accuracy']:.3f}; best: {BASELINE_NAMES[b['best']['rule']]} "
        f"{b['best']['accuracy']:.3f}"
    )


def _log_mlflow(results: dict, run: str, items_path: Path):
    import re

    import mlflow

    from medreason.tracking import log_params, mlflow_run

    def key(text: str) -> str:  # MLflow accepts letters, digits, _ - . / and spaces in names
        return re.sub(r"[^\w\-./ ]", "_", text)

    with mlflow_run("medreason-eval", run_name=f"eval-{results['mode']}-{run}"):
        log_params(
            {
                "mode": results["mode"],
                "base_model": results["base_model"],
                "adapter": str(results["adapter"]),
                "benchmark": results["benchmark"],
                "n_mcq": results["n_mcq"],
                "limit": results["limit"],
                "seed": results["seed"],
                **{k: v for k, v in results["settings"].items() if k != "system_prompt"},
            }
        )
        metrics = {"chance": results["chance"]}
        for rule in ("majority_label", "same_label", "longest_option", "best"):
            metrics[f"baseline_{rule}"] = results["baselines"][rule]["accuracy"]
        for name, v in results["variants"].items():
            for k in (
                "accuracy",
                "extraction_rate",
                "accuracy_when_extracted",
                "tokens_median",
                "tokens_p95",
                "truncation_rate",
                "test_loss",
                "test_perplexity",
            ):
                if v.get(k) is not None:
                    metrics[f"{name}_{k}"] = v[k]
            for task, s in v.get("tasks", {}).items():
                metrics[f"{name}_{task}_acc"] = s["acc"]
            for g, s in v["accuracy_by_group"].items():
                metrics[key(f"{name}_accuracy/{g}")] = s["accuracy"]
        for k in ("diff", "ci_low", "ci_high", "p_value", "b", "c"):
            if "paired" in results:
                metrics[f"paired_{k}"] = results["paired"][k]
        mlflow.log_metrics(metrics)
        mlflow.log_dict(results, "eval.json")
        mlflow.log_artifact(str(items_path))


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
    )
    print(table(results))
    print(f"written to {results['path']} and {results['items_path']}")
    return 0
