"""Evaluation modes as objects: each says how it answers the items with one variant of the model and which columns
it reports. medreason.evaluate runs whichever mode it is given; medreason.report draws its columns.

    from medreason.modes import mode_for
    mode = mode_for("generate", max_new_tokens=256)            # greedy reasoning, then the chosen option
    mode = mode_for("generate", samples=8, temperature=1.0)    # 8 sampled answers each: pass@1, pass@4, pass@8
    mode = mode_for("loglik", chat=True)                        # lm-eval: the log-likelihood of each option's label

Three modes, three questions:
- **generate** (`GenerateMode`): can the model state an answer? It thinks greedily within `max_new_tokens` and the
  MCQ task's grading (medreason.mcq.grade) reads the option it chose. Reports extraction, lengths, truncation.
- **samples** (`SampleMode`): does it sometimes get it right? K sampled answers per item, pass@k by the unbiased
  estimator of Chen et al. (2021). What reinforcement learning could sharpen is the gap between pass@k and pass@1.
- **loglik** (`LoglikMode`): which option does it find most likely? lm-evaluation-harness scores each label.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

from medreason.decode import Decoding
from medreason.errors import UserError


@dataclass(frozen=True)
class Column:
    key: str  # a key of the variant's summary
    header: str
    fmt: str = "{:.3f}"
    width: int = 10

    def cell(self, summary: dict) -> str:
        value = summary.get(self.key)
        return (self.fmt.format(value) if value is not None else "-").rjust(self.width)


@dataclass
class Mode:
    name: ClassVar[str]
    extracts: ClassVar[bool] = False  # answers are read from text: accuracy among the readable ones is reported
    columns: ClassVar[tuple[Column, ...]] = (Column("accuracy", "accuracy"),)
    batch_size: int = 64

    def settings(self, session) -> dict:
        return {"batch_size": self.batch_size}

    def describe(self, settings: dict) -> str:
        raise NotImplementedError

    def prepare(self, session, items, limit: int | None) -> dict:
        """Anything the mode needs once, before the variants (loglik: the adapter's test split); extra fields of
        the results."""
        return {}

    def run(self, session, items, variant: str, use_adapter: bool, cache: bool) -> tuple[list[dict], dict]:
        """(one row per item, the variant's summary), with the model as the caller set it (adapter on or off)."""
        raise NotImplementedError


# --------------------------------------------------------------------------------------------- generate


@dataclass
class GenerateMode(Mode):
    name = "generate"
    extracts = True
    columns = (
        Column("accuracy", "accuracy"),
        Column("extraction_rate", "extracted", width=11),
        Column("accuracy_when_extracted", "acc|extr"),
        Column("tokens_median", "tokens p50", "{:.0f}", 12),
        Column("tokens_p95", "p95", "{:.0f}", 7),
        Column("truncation_rate", "truncated", width=11),
    )
    max_new_tokens: int = 256
    repetition_penalty: float = 1.0

    def decoding(self) -> Decoding:
        # pure greedy (repetition_penalty 1) by default, as reference evaluations decode. A penalty (`chat` uses
        # 1.1) breaks small models' loops; it also penalises every option label the prompt lists, all alike
        return Decoding(max_new_tokens=self.max_new_tokens, repetition_penalty=self.repetition_penalty)

    def settings(self, session) -> dict:
        return {
            "max_new_tokens": self.max_new_tokens,
            "batch_size": self.batch_size,
            "decoding": "greedy",
            "repetition_penalty": self.repetition_penalty,
            "system_prompt": session.system_prompt,
            "template": session.template,
        }

    def describe(self, settings: dict) -> str:
        penalty = settings.get("repetition_penalty", 1.0)
        extra = f" (repetition penalty {penalty:g})" if penalty != 1.0 else ""
        return f"generate, greedy{extra}, {settings['max_new_tokens']} new tokens"

    def run(self, session, items, variant, use_adapter, cache):
        from medreason.answers import answers_for

        outputs = answers_for(session, items, self.decoding(), use_adapter, self.batch_size, cache, variant)
        rows = [grade_row(item, out[0], variant) for item, out in zip(items, outputs)]
        return rows, summarize_generated(rows, self.max_new_tokens)


def grade_row(item, out: dict, variant: str) -> dict:
    """One row of eval_items.jsonl: the output, the label the MCQ task's grading read, and whether it is right."""
    from medreason.mcq import grade

    extracted, correct = grade(out["output"], item.options, item.answer)
    return {
        "id": item.id,
        "group": item.group,
        "variant": variant,
        "answer": item.answer,
        "extracted": extracted,
        "correct": correct,
        "n_options": len(item.options),
        "tokens": out["tokens"],
        "truncated": out["truncated"],
        "output": out["output"],
    }


def summarize_generated(rows: list[dict], max_new_tokens: int) -> dict:
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


# --------------------------------------------------------------------------------------------- samples (pass@k)


@dataclass
class SampleMode(Mode):
    name = "samples"
    extracts = True
    samples: int = 8
    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0
    ks: tuple[int, ...] = field(default=())

    def __post_init__(self):
        if self.samples < 2:
            raise UserError(
                f"--samples must be at least 2 for pass@k (1 is the greedy generate mode), got {self.samples}"
            )
        self.ks = tuple(sorted({k for k in (1, 4, 8, self.samples) if k <= self.samples}))

    @property
    def columns(self):
        return (
            *(Column(f"pass@{k}", f"pass@{k}") for k in self.ks),
            Column("extraction_rate", "extracted", width=11),
            Column("truncation_rate", "truncated", width=11),
        )

    def decoding(self) -> Decoding:
        return Decoding(
            max_new_tokens=self.max_new_tokens,
            greedy=False,
            temperature=self.temperature,
            top_p=self.top_p,
            samples=self.samples,
            seed=self.seed,
        )

    def settings(self, session) -> dict:
        return {
            "samples": self.samples,
            "max_new_tokens": self.max_new_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "system_prompt": session.system_prompt,
            "template": session.template,
        }

    def describe(self, settings: dict) -> str:
        return (
            f"{settings['samples']} samples per item at temperature {settings['temperature']:g}, "
            f"{settings['max_new_tokens']} new tokens; pass@k by the unbiased estimator"
        )

    def run(self, session, items, variant, use_adapter, cache):
        from medreason.answers import answers_for
        from medreason.stats import accuracy_by_group, pass_at_k

        outputs = answers_for(session, items, self.decoding(), use_adapter, self.batch_size, cache, variant)
        rows = []
        for item, outs in zip(items, outputs):
            graded = [grade_row(item, out, variant) for out in outs]
            right = sum(g["correct"] for g in graded)
            rows.append(
                {
                    "id": item.id,
                    "group": item.group,
                    "variant": variant,
                    "answer": item.answer,
                    "samples": len(outs),
                    "right": right,
                    "correct": right / len(outs),  # the item's pass@1 estimate: what the paired test compares
                    **{f"pass@{k}": pass_at_k(len(outs), right, k) for k in self.ks},
                    "extracted": [g["extracted"] for g in graded],
                    "extraction_rate": sum(g["extracted"] is not None for g in graded) / len(outs),
                    "truncation_rate": sum(g["truncated"] for g in graded) / len(outs),
                }
            )
        summary = {"n": len(rows), "accuracy": _mean(rows, "correct")}
        summary |= {f"pass@{k}": _mean(rows, f"pass@{k}") for k in self.ks}
        summary |= {
            "extraction_rate": _mean(rows, "extraction_rate"),
            "truncation_rate": _mean(rows, "truncation_rate"),
        }
        summary["accuracy_by_group"] = accuracy_by_group([r["group"] for r in rows], [r["correct"] for r in rows])
        return rows, summary


def _mean(rows: list[dict], key: str) -> float:
    return sum(r[key] for r in rows) / len(rows)


# --------------------------------------------------------------------------------------------- log-likelihood


@dataclass
class LoglikMode(Mode):
    name = "loglik"
    columns = (
        Column("accuracy", "accuracy"),
        Column("test_loss", "test loss", "{:.4f}", 11),
        Column("test_perplexity", "ppl", "{:.6g}", 12),  # .6g: <= 11 characters at any size
    )
    chat: bool = False
    tasks: tuple[str, ...] = ()
    batch_size: int = 8

    def settings(self, session) -> dict:
        return {"chat": self.chat, "batch_size": self.batch_size}

    def describe(self, settings: dict) -> str:
        return "log-likelihood" + (" with the chat template" if settings.get("chat") else "")

    def prepare(self, session, items, limit):
        from medreason.harness import available_hub_tasks
        from medreason.scoring import adapter_test_split

        self.hub_tasks = available_hub_tasks(self.tasks)
        self.limit = limit
        self.test = adapter_test_split(session, limit)
        return {"n_test": len(self.test)}

    def run(self, session, items, variant, use_adapter, cache):
        from medreason.harness import loglik_choices, summarize_loglik
        from medreason.scoring import heldout_loss

        loss = heldout_loss(session.model, session.tokenizer, self.test, batch_size=self.batch_size)
        rows, scores = loglik_choices(
            session,
            items,
            variant,
            batch_size=self.batch_size,
            chat=self.chat,
            hub_tasks=self.hub_tasks,
            limit=self.limit,
        )
        return rows, {**summarize_loglik(rows), "test_loss": loss, "test_perplexity": math.exp(loss), "tasks": scores}


MODES = {"generate": GenerateMode, "samples": SampleMode, "loglik": LoglikMode}


def mode_for(name: str, samples: int | None = None, *, strict: bool = False, **settings) -> Mode:
    """The mode `medreason eval --mode NAME [--samples K]` runs: generate with --samples is the samples mode.
    `settings` it has no field for are ignored (the command line passes every option), or with `strict` refused."""
    if name not in ("generate", "loglik"):
        raise UserError(f"mode '{name}' is unknown: choose generate or loglik")
    if samples is not None:
        if name != "generate":
            raise UserError("--samples draws answers to generate: use it with --mode generate")
        name, settings = "samples", {**settings, "samples": samples}
    cls = MODES[name]
    known = set(cls.__dataclass_fields__) - {"ks"}
    unknown = sorted(set(settings) - known)
    if strict and unknown:
        raise TypeError(f"the {name} mode has no setting {unknown[0]!r} (it has {', '.join(sorted(known))})")
    return cls(**{k: v for k, v in settings.items() if k in known and v is not None})
