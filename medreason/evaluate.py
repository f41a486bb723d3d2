"""`medreason eval`: what fine-tuning changed, measured. Base model vs base + adapter, one copy of the weights.

    medreason eval --adapter lora_adapter/SmolLM2-135M-Instruct              # offline: test loss + bundled MCQ
    medreason eval --adapter DIR --tasks medreason_mcq,multimedqa            # + the harness's medical tasks (Hub)

    from medreason.evaluate import evaluate
    report = evaluate("lora_adapter/SmolLM2-135M-Instruct")

- Held-out loss and perplexity on the test split, over completion tokens only (as in training).
- Multiple-choice accuracy by log-likelihood with EleutherAI's lm-evaluation-harness, on the in-memory
  model. The bundled benchmark's task follows lm-eval's MedQA prompt ("Question: ...\\nA. ...\\nAnswer:",
  scored over " A" ... " D"), so its numbers read like published harness numbers.
- Results go to results/<run>/eval.json and to MLflow.
"""

from __future__ import annotations

import functools
import json
import logging
import math
from pathlib import Path

from medreason.errors import UserError
from medreason.io import atomic_write_json

log = logging.getLogger(__name__)

BUNDLED_TASK = "medreason_mcq"
HUB_TASKS = {"multimedqa", "medqa_4options", "medmcqa", "pubmedqa", "mmlu_anatomy", "mmlu_clinical_knowledge",
             "mmlu_college_biology", "mmlu_college_medicine", "mmlu_medical_genetics", "mmlu_professional_medicine"}


# --------------------------------------------------------------------------------------------- entry point


def evaluate(adapter: str | None = None, *, model: str | None = None, mcq: str | None = None,
             tasks: tuple[str, ...] = (BUNDLED_TASK,), limit: int | None = None, batch_size: int = 8,
             run_name: str | None = None, session=None) -> dict:
    """Evaluate the base model and (when given) the adapter; write results/<run>/eval.json."""
    from medreason.data import load_mcq, load_splits
    from medreason.generate import load_for_inference
    from medreason.models import hub_reachable

    items = load_mcq(mcq)  # a corrupt MCQ file fails here, before any model loads
    unknown = [t for t in tasks if t != BUNDLED_TASK and t not in HUB_TASKS]
    if unknown:
        raise UserError(f"unknown task '{unknown[0]}': choose {BUNDLED_TASK} or one of {', '.join(sorted(HUB_TASKS))}")
    hub_tasks = [t for t in tasks if t in HUB_TASKS]
    if hub_tasks and not hub_reachable():
        log.warning("the Hub is unreachable: skipping %s (their data lives on the Hub)", ", ".join(hub_tasks))
        hub_tasks = []
    session = session or load_for_inference(adapter, model)
    splits = load_splits(**training_data(session))
    test = splits["test"] if limit is None else splits["test"].select(range(min(limit, len(splits["test"]))))

    variants = [("base", False)] + ([("adapter", True)] if session.adapter else [])
    results = {"base_model": session.base_model, "adapter": session.adapter, "n_test": len(test),
               "n_mcq": len(items) if limit is None else min(limit, len(items)), "chance": 0.25, "variants": {}}
    for name, use_adapter in variants:
        ctx = session.adapter_off() if not use_adapter else _null()
        with ctx:
            loss = heldout_loss(session.model, session.tokenizer, test, batch_size=batch_size)
            scores = mcq_accuracy(session.model, session.tokenizer, items, mcq_path=mcq, limit=limit,
                                  batch_size=batch_size, hub_tasks=hub_tasks)
        results["variants"][name] = {"test_loss": loss, "test_perplexity": math.exp(loss), "tasks": scores}
        log.info("%s: test loss %.4f, %s", name, loss, ", ".join(f"{t} acc {s['acc']:.3f}" for t, s in scores.items()))

    run = run_name or (Path(session.adapter).name if session.adapter else "base")
    out = Path("results") / run / "eval.json"
    atomic_write_json(out, results)
    results["path"] = str(out)
    _log_mlflow(results, run)
    return results


# --------------------------------------------------------------------------------------------- held-out loss


def heldout_loss(model, tokenizer, dataset, batch_size: int = 8) -> float:
    """Mean negative log-likelihood per completion token (prompt tokens masked, as in training)."""
    import torch

    examples = []
    for ex in dataset:
        prompt_ids = tokenizer.apply_chat_template(ex["prompt"], add_generation_prompt=True, tokenize=True,
                                                   return_dict=True)["input_ids"]
        full_ids = tokenizer.apply_chat_template(ex["prompt"] + ex["completion"], tokenize=True,
                                                 return_dict=True)["input_ids"]
        examples.append((full_ids, len(prompt_ids)))
    examples.sort(key=lambda e: len(e[0]))  # similar lengths together: little padding
    total_nll, total_tokens = 0.0, 0
    device = next(model.parameters()).device
    model.eval()
    # PEFT injects LoRA into the base model's own layers, so its decoder answers with the adapter on (and off
    # inside disable_adapter())
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder, head = base.base_model, base.get_output_embeddings()
    with torch.inference_mode():
        for i in range(0, len(examples), batch_size):
            chunk = examples[i:i + batch_size]
            width = max(len(ids) for ids, _ in chunk)
            input_ids = torch.full((len(chunk), width), tokenizer.pad_token_id, dtype=torch.long)
            attention = torch.zeros((len(chunk), width), dtype=torch.long)
            labels = torch.full((len(chunk), width), -100, dtype=torch.long)
            for j, (ids, n_prompt) in enumerate(chunk):
                input_ids[j, :len(ids)] = torch.tensor(ids)
                attention[j, :len(ids)] = 1
                labels[j, n_prompt:len(ids)] = torch.tensor(ids[n_prompt:])
            # the logits of the labelled positions only, as training's dense head computes them: the full
            # [batch, length, vocabulary] logits would be ~50x larger and dominate the time on a CPU
            hidden = decoder(input_ids=input_ids.to(device), attention_mask=attention.to(device)).last_hidden_state
            shift_labels = labels[:, 1:].to(device)
            mask = shift_labels != -100
            logits = head(hidden[:, :-1][mask]).float()
            nll = torch.nn.functional.cross_entropy(logits, shift_labels[mask], reduction="sum")
            total_nll += nll.item()
            total_tokens += int(mask.sum())
    return total_nll / max(1, total_tokens)


# --------------------------------------------------------------------------------------------- MCQ with lm-eval


def mcq_task_config(mcq_path: str | None = None) -> dict:
    """The bundled task (medreason/resources/lm_eval/medreason_mcq.yaml) with its data file resolved."""
    import yaml

    from medreason.data import bundled_path

    config = yaml.safe_load(bundled_path("lm_eval/medreason_mcq.yaml").read_text())
    data = str(Path(mcq_path).resolve()) if mcq_path else str(bundled_path("mcq.jsonl"))
    config["dataset_kwargs"] = {"data_files": {"test": data}}
    return config


def mcq_accuracy(model, tokenizer, items, *, mcq_path=None, limit=None, batch_size=8, hub_tasks=()) -> dict:
    """{task: {acc, acc_stderr, acc_norm, acc_norm_stderr, n}} by log-likelihood with lm-eval."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    tasks = [mcq_task_config(mcq_path)] + list(hub_tasks)
    out = lm_eval.simple_evaluate(model=lm, tasks=tasks, limit=limit, log_samples=False, bootstrap_iters=1000,
                                  random_seed=0, numpy_random_seed=0, torch_random_seed=0, fewshot_random_seed=0,
                                  task_manager=_task_manager(bool(hub_tasks)))
    scores = {}
    for task, metrics in out["results"].items():
        if "acc,none" not in metrics:
            continue
        scores[task] = {
            "acc": metrics["acc,none"], "acc_stderr": _num(metrics.get("acc_stderr,none")),
            "acc_norm": metrics.get("acc_norm,none"), "acc_norm_stderr": _num(metrics.get("acc_norm_stderr,none")),
            "n": out.get("n-samples", {}).get(task, {}).get("effective"),
        }
    return scores


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
    """Base vs adapter, as printed by `medreason eval` and shown in the book."""
    lines = [f"{'':<10}{'test loss':>10}{'ppl':>8}   " + "   ".join(
        f"{t} acc ± se" for t in next(iter(results['variants'].values()))['tasks'])]
    for name, v in results["variants"].items():
        accs = "   ".join(f"{s['acc']:.3f} ± {s['acc_stderr'] or 0:.3f}".rjust(len(t) + 9) for t, s in v["tasks"].items())
        lines.append(f"{name:<10}{v['test_loss']:>10.4f}{v['test_perplexity']:>8.2f}   {accs}")
    lines.append(f"chance level (4 options): {results['chance']:.3f}; test examples {results['n_test']}, "
                 f"MCQ items {results['n_mcq']}")
    return "\n".join(lines)


def _log_mlflow(results: dict, run: str):
    import mlflow

    from medreason.tracking import log_params, mlflow_run

    with mlflow_run("medreason-eval", run_name=f"eval-{run}"):
        log_params({"base_model": results["base_model"], "adapter": str(results["adapter"])})
        for name, v in results["variants"].items():
            mlflow.log_metric(f"{name}_test_loss", v["test_loss"])
            mlflow.log_metric(f"{name}_test_perplexity", v["test_perplexity"])
            for task, s in v["tasks"].items():
                mlflow.log_metric(f"{name}_{task}_acc", s["acc"])
        mlflow.log_dict(results, "eval.json")


def training_data(session) -> dict:
    """load_splits arguments that rebuild the adapter's own test split: every data argument it was trained with
    (medreason.json "data"), and a check that the file still has the content it was trained on. Without an
    adapter (or for an adapter from before these records), the bundled corpus with the session's template."""
    data = session.meta.get("data") or {}
    if not data.get("args"):
        return {"dataset": session.meta.get("dataset") or "bundled", "template": session.template,
                "system_prompt": session.system_prompt}
    if data.get("kind") in ("file", "bundled") and data.get("sha256"):
        from medreason.io import sha256_file

        path = Path(data["path"])
        if not path.is_file():
            raise UserError(f"adapter {session.adapter} was trained on {path}, which no longer exists")
        if sha256_file(path) != data["sha256"]:
            raise UserError(f"{path} changed since adapter {session.adapter} was trained on it (sha256 differs): "
                            f"its test split cannot be rebuilt")
    return {"dataset": data.get("dataset", "bundled"), **data["args"]}


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def cli(args) -> int:
    tasks = tuple(t.strip() for t in args.tasks.split(",") if t.strip())
    results = evaluate(args.adapter, model=args.model, mcq=args.mcq, tasks=tasks, limit=args.limit,
                       batch_size=args.batch_size, run_name=args.run_name)
    print(table(results))
    print(f"written to {results['path']}")
    return 0
