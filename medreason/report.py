"""How `medreason eval` reports: the printed table (the mode's own columns), the line of no-knowledge baselines,
and the MLflow run.

    from medreason.report import baselines_line, table
    print(table(results))            # one row per variant: the mode's columns, then the comparisons and the groups
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)


def mode_of(results: dict):
    """The mode object an eval.json was made with (its columns and how it describes itself)."""
    from medreason.modes import MODES

    settings = results.get("settings", {})
    cls = MODES[results["mode"]]
    known = set(cls.__dataclass_fields__)
    return cls(**{k: v for k, v in settings.items() if k in known})


def table(results: dict, mode=None, groups: bool = True) -> str:
    """Base vs adapter, the paired comparison and (with `groups`) accuracy per group, as `medreason eval` prints
    it."""
    from medreason.baselines import BASELINE_NAMES

    mode = mode or mode_of(results)
    names = list(results["variants"])
    tasks = list(next(iter(results["variants"].values())).get("tasks", {}))  # lm-eval's own scores, when run
    lines = [
        f"{'':<10}"
        + "".join(c.header.rjust(c.width) for c in mode.columns)
        + "".join(f"   {t} acc ± se" for t in tasks)
    ]
    for name, v in results["variants"].items():
        scores = "".join(
            f"{s['acc']:.3f} ± {s['acc_stderr'] or 0:.3f}".rjust(len(t) + 12) for t, s in v.get("tasks", {}).items()
        )
        lines.append(f"{name:<10}" + "".join(c.cell(v) for c in mode.columns) + scores)
    lines.append(
        f"chance level (1/k per item, averaged): {results['chance']:.3f}; {results['n_mcq']} items of "
        f"{results['benchmark']}; {mode.describe(results['settings'])}"
    )
    if "baselines" in results:
        lines.append(baselines_line(results["baselines"]))
    for name, v in results["variants"].items() if "baselines" in results else ():
        vs = v["vs_best_baseline"]
        low, high = v["accuracy_ci"]
        extra = ""
        if v.get("accuracy_when_extracted_ci"):
            el, eh = v["accuracy_when_extracted_ci"]
            extra = f"; among extracted {v['accuracy_when_extracted']:.3f} (95% {el:.3f}-{eh:.3f})"
        elif mode.extracts and "accuracy_when_extracted_ci" in v:
            extra = "; no answer extracted"
        lines.append(
            f"{name}: accuracy {v['accuracy']:.3f} (Wilson 95% {low:.3f}-{high:.3f}), {vs['diff']:+.3f} vs the best "
            f"no-knowledge rule ({BASELINE_NAMES[vs['rule']]}) item by item (95% {vs['ci_low']:+.3f} to "
            f"{vs['ci_high']:+.3f}, p = {vs['p_value']:.3g}){extra}"
        )
    if "paired" in results:
        p = results["paired"]
        test = "McNemar exact" if "test" not in p else p["test"]
        lines.append(
            f"adapter - base: {p['diff']:+.3f} (paired bootstrap 95% interval {p['ci_low']:+.3f} to "
            f"{p['ci_high']:+.3f}); {test} p = {p['p_value']:.3g} "
            f"({p['c']} items better with the adapter, {p['b']} better without)"
        )
    if not groups:
        return "\n".join(lines)
    lines.append("")
    lines.append(f"{'group':<36}{'n':>4}" + "".join(f"{n:>10}" for n in names))
    for g, n in results["groups"].items():
        accs = "".join(f"{results['variants'][v]['accuracy_by_group'][g]['accuracy']:>10.3f}" for v in names)
        lines.append(f"{g[:35]:<36}{n:>4}{accs}")
    return "\n".join(lines)


def baselines_line(b: dict) -> str:
    """The trivial baselines in one line, as `medreason eval` and the book print them."""
    from medreason.baselines import BASELINE_NAMES

    return (
        f"no-knowledge baselines: chance {b['chance']['accuracy']:.3f}, majority label "
        f"{b['majority_label']['label']} {b['majority_label']['accuracy']:.3f} (label from "
        f"{b['majority_label']['label_from']}), best same label {b['same_label']['label']} "
        f"{b['same_label']['accuracy']:.3f} (chosen after seeing the answers), longest option "
        f"{b['longest_option']['accuracy']:.3f}; best: {BASELINE_NAMES[b['best']['rule']]} "
        f"{b['best']['accuracy']:.3f}"
    )


def mlflow_metrics(results: dict, mode=None) -> dict[str, float]:
    """The figures of an evaluation as MLflow metrics: chance, the baselines, each variant's columns, its accuracy
    per group, its tasks, and the paired comparison."""
    mode = mode or mode_of(results)
    metrics = {"chance": results["chance"]}
    for rule in ("majority_label", "same_label", "longest_option", "best"):
        metrics[f"baseline_{rule}"] = results["baselines"][rule]["accuracy"]
    for name, v in results["variants"].items():
        for key in {"accuracy", *(c.key for c in mode.columns)}:
            if v.get(key) is not None:
                metrics[f"{name}_{key}"] = v[key]
        for task, s in v.get("tasks", {}).items():
            metrics[f"{name}_{task}_acc"] = s["acc"]
        for g, s in v["accuracy_by_group"].items():
            metrics[f"{name}_accuracy/{g}"] = s["accuracy"]
    for k in ("diff", "ci_low", "ci_high", "p_value", "b", "c"):
        if "paired" in results:
            metrics[f"paired_{k}"] = results["paired"][k]
    return metrics


def log_mlflow(results: dict, run: str, items_path: Path):
    """One MLflow run per evaluation (experiment `medreason-eval`): settings as params, the figures as metrics,
    eval.json and the items as artifacts (medreason.tracking makes every MLflow call)."""
    from medreason import tracking

    with tracking.mlflow_run("medreason-eval", run_name=f"eval-{results['mode']}-{run}"):
        tracking.log_params(
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
        tracking.log_metrics(mlflow_metrics(results))
        tracking.log_dicts({"eval": results})
        tracking.log_artifact(items_path)
