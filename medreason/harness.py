"""Log-likelihood mode of `medreason eval`: EleutherAI's lm-evaluation-harness scores each option label after
"Question ... Answer:" (raw, as published harness numbers are, or with `--chat` through the chat template): what
the model *knows* about the options, independent of whether it can state an answer.

    from medreason.harness import loglik_choices, mcq_task_config
    rows = loglik_choices(session, items, "adapter", batch_size=8, chat=False)   # one row per item, scored
    mcq_task_config()      # the bundled task (resources/lm_eval/medreason_mcq.yaml) on the installed benchmark file

The Hub's medical tasks (MultiMedQA and its parts) run through the same harness when the Hub is reachable.
"""

from __future__ import annotations

import functools
import json
import logging
from pathlib import Path

from medreason.errors import UserError

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


def available_hub_tasks(tasks) -> list[str]:
    from medreason.models import hub_reachable

    unknown = [t for t in tasks if t != BUNDLED_TASK and t not in HUB_TASKS]
    if unknown:
        raise UserError(f"unknown task '{unknown[0]}': choose {BUNDLED_TASK} or one of {', '.join(sorted(HUB_TASKS))}")
    hub_tasks = [t for t in tasks if t in HUB_TASKS]
    if hub_tasks and not hub_reachable():
        log.warning("the Hub is unreachable: skipping %s (their data lives on the Hub)", ", ".join(hub_tasks))
        hub_tasks = []
    return hub_tasks


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
            task_manager=task_manager(bool(hub_tasks)),
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
def task_manager(with_harness_tasks: bool):
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
