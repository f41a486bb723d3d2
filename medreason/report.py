"""How `medreason eval` reports: the printed table, the line of no-knowledge baselines, and the MLflow run.

from medreason.report import baselines_line, table
print(table(results))            # one row per variant and task: accuracy with its interval, extraction, ...
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)


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


def log_mlflow(results: dict, run: str, items_path: Path):
    import mlflow

    from medreason.guards import mlflow_key as key  # what MLflow accepts as a key ('a//b', '..' and '/x' are not)
    from medreason.tracking import log_params, mlflow_run

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
