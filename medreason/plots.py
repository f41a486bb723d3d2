"""Figures and tables for the book: small views over what the package computes, never a second copy of it.

    from medreason import plots
    plots.loss_curves({k: tracking.metric_history(run_id, k) for k in ("loss", "eval_loss")})
    plots.label_mask_html(data.label_mask(tokenizer, ex)) # which tokens carry loss, as TRL prepares them
    plots.lora_param_plot(estimates.lora_param_table(model))

This module draws what it is handed: the numbers come from `medreason.data`, `medreason.estimates`,
`medreason.compute`, `medreason.generate` and the MLflow store. Figures are matplotlib Figures made with pyplot, so
a notebook shows each once, at the end of its cell. Tables are pandas DataFrames or Stylers. Heavy imports stay inside
the functions.
"""

from __future__ import annotations

import html

# --------------------------------------------------------------------------------------------- introduction


def pipeline_diagram():
    """The medreason curriculum as boxes and arrows: recipe -> data -> model -> SFT -> adapter -> GRPO, and the
    adapters' uses (MLflow, chat, evaluation, export)."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    stages = [
        ("recipe", "configs/*.yaml\nmedreason.config"),
        ("data", "MCQ set, facts,\nsplit, chat format\nmedreason.data"),
        ("base model", "SmolLM2-135M\n(Hub or offline)\nmedreason.models"),
        ("SFT", "TRL SFTTrainer\n+ PEFT LoRA\nrecipes/sft.py"),
        ("GRPO", "TRL GRPOTrainer\nverifiable rewards\nrecipes/grpo.py"),
    ]
    uses = [
        ("MLflow", "results/mlflow.db\nevery run"),
        ("chat", "medreason.chat\nbase vs adapter"),
        ("eval", "medreason.evaluate\ngenerate, pass@k,\nlog-likelihood"),
        ("export", "merged model,\nvLLM serving"),
    ]
    fig, ax = plt.subplots(figsize=(11, 4.2))
    ax.set_xlim(0, 11)
    ax.set_ylim(0, 4.2)
    ax.axis("off")

    def box(x, y, title, body, color):
        ax.add_patch(FancyBboxPatch((x, y), 1.8, 1.25, boxstyle="round,pad=0.05", fc=color, ec="#333333"))
        ax.text(x + 0.9, y + 1.02, title, ha="center", va="center", fontsize=10, weight="bold")
        ax.text(x + 0.9, y + 0.45, body, ha="center", va="center", fontsize=7.5)

    def arrow(x0, y0, x1, y1):
        ax.add_patch(FancyArrowPatch((x0, y0), (x1, y1), arrowstyle="-|>", mutation_scale=14, color="#333333"))

    for i, (title, body) in enumerate(stages):
        x = 0.15 + i * 2.2
        box(x, 2.7, title, body, "#dbe9f6" if i < 3 else "#d5f0d5")
        if i:
            arrow(x - 0.37, 3.32, x - 0.03, 3.32)
    for i, (title, body) in enumerate(uses):
        x = 1.25 + i * 2.3
        box(x, 0.25, title, body, "#fbe5c8")
    arrow(7.65, 2.66, 2.15, 1.56)  # training -> MLflow
    for i in range(1, 4):
        arrow(9.85, 2.66, 1.25 + i * 2.3 + 0.9, 1.56)  # the adapters -> their uses
    ax.set_title("What this book builds: adapters trained in two stages, then their uses", fontsize=11)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------------- data


def label_mask_html(tokens: list[tuple[str, bool]]):
    """(token text, carries loss) pairs, e.g. from `medreason.data.label_mask`, as coloured spans: grey
    carries no loss (prompt), green carries loss."""
    from IPython.display import HTML

    spans = []
    for text, trained in tokens:
        shown = html.escape(text).replace("\n", "↵<br>")
        style = "background:#c8ecc8;color:#0b3d0b" if trained else "background:#e6e6e6;color:#555555"
        spans.append(f'<span style="{style};border-right:1px solid #ffffff;padding:0 1px">{shown}</span>')
    n_trained = sum(t for _, t in tokens)
    legend = (
        f'<p><span style="background:#e6e6e6;padding:0 4px">grey: label -100, no loss</span> '
        f'<span style="background:#c8ecc8;padding:0 4px">green: trained on</span> '
        f"&nbsp;{len(tokens)} tokens, {n_trained} carry loss ({n_trained / len(tokens):.0%})</p>"
    )
    body = "".join(spans)
    return HTML(
        f'{legend}<div style="font-family:monospace;font-size:12px;line-height:1.7;'
        f'max-height:28em;overflow-y:auto;border:1px solid #dddddd;padding:6px">{body}</div>'
    )


def token_length_hist(lengths: dict[str, list[int]], max_length: int = 1024):
    """Histogram of tokens per example (prompt + completion), one colour per split, with max_length marked."""
    import matplotlib.pyplot as plt
    import numpy as np

    every = np.concatenate([np.asarray(v) for v in lengths.values() if len(v)])
    bins = np.linspace(0.9 * every.min(), max(every.max(), max_length) * 1.03, 40)
    fig, ax = plt.subplots(figsize=(8, 3.8))
    ax.hist([lengths[k] for k in lengths], bins=bins, stacked=True, label=list(lengths))
    ax.axvline(max_length, color="crimson", linestyle="--", label=f"max_length = {max_length}")
    ax.axvline(float(np.median(every)), color="black", linestyle=":", label=f"median = {int(np.median(every))}")
    ax.set_xlabel("tokens per example (chat template over prompt + completion)")
    ax.set_ylabel("examples")
    ax.legend()
    ax.set_title(f"{len(every)} examples; {int((every > max_length).sum())} longer than max_length")
    fig.tight_layout()
    return fig


def split_table(splits):
    """Rows and share per split of a DatasetDict."""
    import pandas as pd

    total = sum(len(ds) for ds in splits.values())
    return pd.DataFrame(
        {
            "rows": {k: len(v) for k, v in splits.items()},
            "share": {k: f"{len(v) / total:.1%}" for k, v in splits.items()},
        }
    ).rename_axis("split")


def specialty_bar(splits):
    """Examples per specialty, stacked by split."""
    import matplotlib.pyplot as plt
    import pandas as pd

    counts = pd.DataFrame({name: pd.Series(ds["specialty"]).value_counts() for name, ds in splits.items()}).fillna(0)
    counts = counts.loc[sorted(counts.index, reverse=True)]
    fig, ax = plt.subplots(figsize=(8, max(3, 0.28 * len(counts))))
    counts.plot.barh(stacked=True, ax=ax, width=0.8)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_xlabel("examples")
    ax.set_ylabel("")
    ax.set_title("Specialties in the corpus, by split")
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------------- LoRA theory


def lora_param_plot(table, base_params: int | None = None):
    """Trainable parameters against rank (log-log), one line per target preset."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for preset, part in table.groupby("targets", sort=False):
        ax.plot(part["rank r"], part["trainable params"] / 1e6, marker="o", label=f"LoRA on {preset}")
    if base_params:
        ax.axhline(base_params / 1e6, color="grey", linestyle="--", label="full fine-tuning (all weights)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(sorted(table["rank r"].unique()))
    ax.get_xaxis().set_major_formatter(plt.FuncFormatter(lambda v, _: f"{int(v)}"))
    ax.set_xlabel("rank r")
    ax.set_ylabel("trainable parameters (millions)")
    ax.legend()
    ax.grid(alpha=0.3, which="both")
    ax.set_title("LoRA's trainable parameters grow linearly with r")
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------------- training


def loss_curves(history: dict[str, list[tuple[int, float]]], title: str = ""):
    """Training loss (every logging step) and validation loss (every evaluation), with the learning-rate
    schedule beside them: `history` maps "loss", "eval_loss" and "learning_rate" to (step, value) pairs, as
    `medreason.tracking.metric_history` reads them from the MLflow store."""
    import matplotlib.pyplot as plt

    train, evals, lr = (history.get(key) or [] for key in ("loss", "eval_loss", "learning_rate"))
    fig, (ax, ax_lr) = plt.subplots(1, 2, figsize=(11, 3.8), gridspec_kw={"width_ratios": [2, 1]})
    if train:
        ax.plot(*zip(*train), marker=".", label="training loss (per logged step)")
    if evals:
        ax.plot(*zip(*evals), marker="o", linestyle="--", label="validation loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy per completion token")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    if lr:
        ax_lr.plot(*zip(*lr), color="tab:green")
    ax_lr.set_xlabel("optimizer step")
    ax_lr.set_title("learning rate")
    ax_lr.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def runs_table(runs: list[dict]):
    """Runs as the MLflow UI lists them, from `medreason.tracking.find_runs`."""
    import pandas as pd

    if not runs:
        return pd.DataFrame()
    return pd.DataFrame(
        [
            {
                "run id": r["run_id"][:8],
                "run name": r["run_name"],
                "status": r["status"],
                "started": pd.Timestamp(r["start_time"], unit="ms").strftime("%Y-%m-%d %H:%M"),
                "final train loss": r["metrics"].get("final_train_loss"),
                "final eval loss": r["metrics"].get("final_eval_loss"),
                "final test loss": r["metrics"].get("final_test_loss"),
            }
            for r in runs
        ]
    ).set_index("run id")


# --------------------------------------------------------------------------------------------- inference


def answers_table(pairs, references: list[str] | None = None):
    """Base and adapter answers per question, reasoning apart from the final answer (a pandas Styler)."""
    import pandas as pd

    rows = []
    for i, (base, tuned) in enumerate(pairs):
        for label, a in (("base model", base), ("base + adapter", tuned)):
            rows.append(
                {
                    "question": i + 1,
                    "model": label,
                    "reasoning (think block)": a.reasoning or "(none)",
                    "final answer": a.final or "(none: still thinking at max_new_tokens)",
                    "new tokens": a.new_tokens,
                }
            )
        if references:
            rows.append(
                {
                    "question": i + 1,
                    "model": "reference (corpus)",
                    "reasoning (think block)": "",
                    "final answer": references[i],
                    "new tokens": None,
                }
            )
    frame = pd.DataFrame(rows).set_index(["question", "model"])
    return text_table(frame).format({"new tokens": lambda v: "" if pd.isna(v) else f"{v:.0f}"})


def text_table(frame):
    """A DataFrame of long texts as a readable HTML table: wrapped, left-aligned, and HTML-escaped, since
    model output can contain tags such as <think> that a browser would otherwise swallow."""
    return (
        frame.style.format(escape="html")
        .set_properties(
            **{"white-space": "pre-wrap", "text-align": "left", "vertical-align": "top", "font-size": "0.85em"}
        )
        .set_table_styles([{"selector": "th", "props": "vertical-align: top; text-align: left"}])
    )


# --------------------------------------------------------------------------------------------- evaluation
