"""Figures and tables for the book: small views over what the package computes, never a second copy of it.

    from medreason import plots
    plots.loss_curves(run_id)                            # train/validation loss from the MLflow store
    plots.label_mask_html(tokenizer, example)            # which tokens carry loss, as TRL prepares them
    plots.lora_param_table(model)                        # trainable parameters vs rank and target modules
    plots.weight_memory_table({"SmolLM2-135M": model})   # bytes for the weights in fp32 / bf16 / NF4

Figures are matplotlib Figures made with pyplot, so a notebook shows each once, at the end of its cell.
Tables are pandas DataFrames. Heavy imports stay inside the functions.
"""

from __future__ import annotations

import copy
import html
import math
import tempfile
from pathlib import Path

# QLoRA's 4-bit NormalFloat storage (Dettmers et al. 2023): 4 bits per weight plus one absmax constant per
# block of 64 weights. Without double quantization the constant is fp32 (32/64 = 0.5 bit per weight); double
# quantization stores it in 8 bits with one fp32 constant per 256 constants: 8/64 + 32/(64*256) ≈ 0.127 bit.
NF4_BITS = 4 + 32 / 64
NF4_DQ_BITS = 4 + 8 / 64 + 32 / (64 * 256)
ADAMW_BYTES = 4 + 4 + 8  # per trainable fp32 parameter: the weight, its gradient, two Adam moments


# --------------------------------------------------------------------------------------------- introduction


def pipeline_diagram():
    """The medreason pipeline as boxes and arrows: recipe -> data -> model -> trainer -> adapter -> use."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    stages = [
        ("recipe", "configs/*.yaml\nmedreason.config"),
        ("data", "validate, dedupe,\nsplit, chat format\nmedreason.data"),
        ("base model", "SmolLM2-135M\n(Hub or offline)\nmedreason.models"),
        ("training", "TRL SFTTrainer\n+ PEFT LoRA\nmedreason.train"),
        ("adapter", "lora_adapter/\n<model>/"),
    ]
    uses = [("MLflow", "results/mlflow.db\nloss curves"), ("chat", "medreason.generate\nbase vs adapter"),
            ("eval", "medreason.evaluate\nloss, MCQ"), ("export", "merged model,\nvLLM serving")]
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
        box(x, 2.7, title, body, "#dbe9f6" if i < 4 else "#d5f0d5")
        if i:
            arrow(x - 0.37, 3.32, x - 0.03, 3.32)
    for i, (title, body) in enumerate(uses):
        x = 1.25 + i * 2.3
        box(x, 0.25, title, body, "#fbe5c8")
    arrow(7.65, 2.66, 2.15, 1.56)  # training -> MLflow
    for i in range(1, 4):
        arrow(9.85, 2.66, 1.25 + i * 2.3 + 0.9, 1.56)  # adapter -> its uses
    ax.set_title("What this book builds: one LoRA adapter, then its uses", fontsize=11)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------------- data


def label_mask(tokenizer, example: dict, max_length: int = 1024) -> list[tuple[str, bool]]:
    """(token text, carries loss) for one prompt-completion example, tokenized and collated by TRL's own
    SFTTrainer exactly as in training: a tiny random model stands in, since weights do not affect labels."""
    import torch
    import trl
    from datasets import Dataset
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, pad_token_id=tokenizer.pad_token_id)
    model = LlamaForCausalLM(config).to(torch.float32)
    with tempfile.TemporaryDirectory() as tmp:
        args = trl.SFTConfig(output_dir=tmp, max_length=max_length, report_to=[], bf16=False, use_cpu=True,
                             disable_tqdm=True)
        trainer = trl.SFTTrainer(model=model, args=args, processing_class=tokenizer,
                                 train_dataset=Dataset.from_list([example]))
        batch = trainer.data_collator([trainer.train_dataset[0]])
    ids, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()
    return [(tokenizer.decode([i]), label != -100) for i, label in zip(ids, labels)]


def label_mask_html(tokenizer, example: dict, max_length: int = 1024):
    """The example's tokens as coloured spans: grey carries no loss (prompt), green carries loss."""
    from IPython.display import HTML

    tokens = label_mask(tokenizer, example, max_length)
    spans = []
    for text, trained in tokens:
        shown = html.escape(text).replace("\n", "↵<br>")
        style = "background:#c8ecc8;color:#0b3d0b" if trained else "background:#e6e6e6;color:#555555"
        spans.append(f'<span style="{style};border-right:1px solid #ffffff;padding:0 1px">{shown}</span>')
    n_trained = sum(t for _, t in tokens)
    legend = (f'<p><span style="background:#e6e6e6;padding:0 4px">grey: label -100, no loss</span> '
              f'<span style="background:#c8ecc8;padding:0 4px">green: trained on</span> '
              f"&nbsp;{len(tokens)} tokens, {n_trained} carry loss ({n_trained / len(tokens):.0%})</p>")
    body = "".join(spans)
    return HTML(f'{legend}<div style="font-family:monospace;font-size:12px;line-height:1.7;'
                f'max-height:28em;overflow-y:auto;border:1px solid #dddddd;padding:6px">{body}</div>')


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
    return pd.DataFrame({"rows": {k: len(v) for k, v in splits.items()},
                         "share": {k: f"{len(v) / total:.1%}" for k, v in splits.items()}}).rename_axis("split")


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


def lora_param_table(model, ranks=(4, 8, 16, 32, 64), target_presets=("attention", "all-linear"), alpha_per_rank=2,
                     **lora_kwargs):
    """Trainable parameters and adapter size for each (targets, rank), counted by PEFT itself on a copy of
    `model` (the model passed in is left untouched). alpha = alpha_per_rank * r keeps the scale alpha/r fixed;
    `lora_kwargs` go to LoraConfig (use_dora=True, use_rslora=True, ...)."""
    import pandas as pd
    from peft import LoraConfig, get_peft_model

    from medreason.config import LORA_PRESETS

    base = sum(p.numel() for p in model.parameters())
    rows = []
    for preset in target_presets:
        for r in ranks:
            config = LoraConfig(r=r, lora_alpha=alpha_per_rank * r, target_modules=LORA_PRESETS[preset],
                                lora_dropout=0.0, task_type="CAUSAL_LM", **lora_kwargs)
            peft_model = get_peft_model(copy.deepcopy(model), config)
            trainable, _ = peft_model.get_nb_trainable_parameters()
            n_modules = sum(1 for name, _ in peft_model.named_modules() if name.endswith(".lora_A"))
            del peft_model
            rows.append({
                "targets": preset, "rank r": r, "adapted layers": n_modules, "trainable params": trainable,
                "% of base": 100 * trainable / base, "adapter MB (fp32)": trainable * 4 / 1e6,
                "adapter MB (bf16)": trainable * 2 / 1e6, "AdamW state MB": trainable * ADAMW_BYTES / 1e6,
            })
    return pd.DataFrame(rows)


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


def architecture_on_meta(config):
    """A model of `config`'s architecture on PyTorch's meta device: real shapes, no memory, no weights."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def quantizable_split(model) -> tuple[int, int]:
    """(parameters in the decoder's linear layers, all other parameters). bitsandbytes quantizes the
    former to 4 bits under QLoRA; embeddings, norms, biases and the output head stay in bf16."""
    import torch

    unique, linear = {}, 0
    for p in model.parameters():
        unique[id(p)] = p.numel()
    head = model.get_output_embeddings()
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) and module is not head:
            linear += module.weight.numel()
    return linear, sum(unique.values()) - linear


def weight_memory_table(models: dict):
    """GB for the weights alone, per storage format, for each named model: fp32, bf16, and QLoRA's NF4
    (linear layers in 4 bits, the rest in bf16) with and without double quantization."""
    import pandas as pd

    rows = []
    for name, model in models.items():
        linear, other = quantizable_split(model)
        total = linear + other
        nf4 = linear * NF4_BITS / 8 + other * 2
        nf4_dq = linear * NF4_DQ_BITS / 8 + other * 2
        rows.append({
            "model": name, "params (M)": total / 1e6, "in linear layers": f"{linear / total:.0%}",
            "fp32 GB": total * 4 / 1e9, "bf16 GB": total * 2 / 1e9, "NF4 GB": nf4 / 1e9, "NF4+DQ GB": nf4_dq / 1e9,
            "NF4+DQ bytes/param": nf4_dq / total,
        })
    return pd.DataFrame(rows).set_index("model")


# --------------------------------------------------------------------------------------------- training


def _client():
    import mlflow

    from medreason.train import tracking_uri

    return mlflow.MlflowClient(tracking_uri())


def metric_history(run_id: str, key: str) -> list[tuple[int, float]]:
    """(step, value) pairs of one metric of an MLflow run, in step order."""
    return sorted((m.step, m.value) for m in _client().get_metric_history(run_id, key))


def loss_curves(run_id: str):
    """Training loss (every logging step) and validation loss (every evaluation) from the MLflow store,
    with the learning-rate schedule beside them."""
    import matplotlib.pyplot as plt

    train = metric_history(run_id, "loss")
    evals = metric_history(run_id, "eval_loss")
    lr = metric_history(run_id, "learning_rate")
    fig, (ax, ax_lr) = plt.subplots(1, 2, figsize=(11, 3.8), gridspec_kw={"width_ratios": [2, 1]})
    if train:
        ax.plot(*zip(*train), marker=".", label="training loss (per logged step)")
    if evals:
        ax.plot(*zip(*evals), marker="o", linestyle="--", label="validation loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy per completion token")
    ax.set_title(f"MLflow run {run_id[:8]}")
    ax.grid(alpha=0.3)
    ax.legend()
    if lr:
        ax_lr.plot(*zip(*lr), color="tab:green")
    ax_lr.set_xlabel("optimizer step")
    ax_lr.set_title("learning rate")
    ax_lr.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def run_metrics_table(run_id: str, prefix: str = "final_"):
    """The run's final metrics (logged once after training) as a table."""
    import pandas as pd

    metrics = _client().get_run(run_id).data.metrics
    rows = {k[len(prefix):]: v for k, v in sorted(metrics.items()) if k.startswith(prefix)}
    return pd.DataFrame({"value": rows}).rename_axis("metric")


def runs_table(experiment: str = "medreason", max_runs: int = 5):
    """The latest runs of an MLflow experiment, as the MLflow UI lists them."""
    import pandas as pd

    client = _client()
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return pd.DataFrame()
    runs = client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"], max_results=max_runs)
    return pd.DataFrame([{
        "run id": r.info.run_id[:8], "run name": r.info.run_name, "status": r.info.status,
        "started": pd.Timestamp(r.info.start_time, unit="ms").strftime("%Y-%m-%d %H:%M"),
        "final train loss": r.data.metrics.get("final_train_loss"),
        "final eval loss": r.data.metrics.get("final_eval_loss"),
        "final test loss": r.data.metrics.get("final_test_loss"),
    } for r in runs]).set_index("run id")


# --------------------------------------------------------------------------------------------- inference


def answers_table(pairs, references: list[str] | None = None):
    """Base and adapter answers per question, reasoning apart from the final answer (a pandas Styler)."""
    import pandas as pd

    rows = []
    for i, (base, tuned) in enumerate(pairs):
        for label, a in (("base model", base), ("base + adapter", tuned)):
            rows.append({"question": i + 1, "model": label, "reasoning (think block)": a.reasoning or "(none)",
                         "final answer": a.final or "(none: still thinking at max_new_tokens)",
                         "new tokens": a.new_tokens})
        if references:
            rows.append({"question": i + 1, "model": "reference (corpus)", "reasoning (think block)": "",
                         "final answer": references[i], "new tokens": None})
    frame = pd.DataFrame(rows).set_index(["question", "model"])
    return text_table(frame).format({"new tokens": lambda v: "" if pd.isna(v) else f"{v:.0f}"})


def start_probability(session, questions: list[str], start: str = "<think>\n"):
    """How likely each model is to open its answer with `start` (the template's reasoning block), right
    after the chat template's assistant header: P(start | prompt), the product of its tokens' probabilities,
    for the base model (adapter off) and the adapter, their ratio, and each one's most likely first token."""
    import contextlib

    import pandas as pd
    import torch

    tok = session.tokenizer
    variants = [("base", False)] + ([("adapter", True)] if session.adapter else [])
    rows = []
    for i, question in enumerate(questions, 1):
        prompt = tok.apply_chat_template(
            [{"role": "system", "content": session.system_prompt}, {"role": "user", "content": question.strip()}],
            tokenize=False, add_generation_prompt=True)
        prompt_ids = tok(prompt, add_special_tokens=False)["input_ids"]
        full_ids = tok(prompt + start, add_special_tokens=False)["input_ids"]
        if full_ids[:len(prompt_ids)] != prompt_ids:  # the start merged with the prompt's last token
            full_ids = prompt_ids + tok(start, add_special_tokens=False)["input_ids"]
        start_ids = torch.tensor(full_ids[len(prompt_ids):])
        row = {"question": i}
        for name, use_adapter in variants:
            ctx = contextlib.nullcontext() if use_adapter else session.adapter_off()
            with ctx, torch.inference_mode():
                logits = session.model(input_ids=torch.tensor([full_ids], device=session.model.device)).logits
            logp = torch.log_softmax(logits[0, len(prompt_ids) - 1:-1].float().cpu(), dim=-1)
            row[f"P(start | {name})"] = float(logp.gather(1, start_ids[:, None]).sum().exp())
            row[f"first token {name}"] = repr(tok.decode([int(logp[0].argmax())]))
        if session.adapter:
            row["adapter / base"] = row["P(start | adapter)"] / max(row["P(start | base)"], 1e-300)
        rows.append(row)
    return pd.DataFrame(rows).set_index("question")


def text_table(frame):
    """A DataFrame of long texts as a readable HTML table: wrapped, left-aligned, and HTML-escaped, since
    model output can contain tags such as <think> that a browser would otherwise swallow."""
    return frame.style.format(escape="html").set_properties(
        **{"white-space": "pre-wrap", "text-align": "left", "vertical-align": "top", "font-size": "0.85em"}
    ).set_table_styles([{"selector": "th", "props": "vertical-align: top; text-align: left"}])


# --------------------------------------------------------------------------------------------- evaluation


def eval_bar(results: dict, task: str = "medreason_mcq"):
    """MCQ accuracy per variant with ±1 standard error, the chance line, and held-out perplexity beside it."""
    import matplotlib.pyplot as plt

    names = list(results["variants"])
    accs = [results["variants"][n]["tasks"][task]["acc"] for n in names]
    errs = [results["variants"][n]["tasks"][task]["acc_stderr"] or 0 for n in names]
    ppl = [results["variants"][n]["test_perplexity"] for n in names]
    colors = ["#9db4d0", "#4c8c4a"][:len(names)]
    fig, (ax, ax_ppl) = plt.subplots(1, 2, figsize=(9, 3.8))
    ax.bar(names, accs, yerr=errs, capsize=8, color=colors)
    ax.axhline(results["chance"], color="crimson", linestyle="--", label=f"chance ({results['chance']:.2f})")
    ax.set_ylim(0, max(0.5, max(a + e for a, e in zip(accs, errs)) + 0.05))
    ax.set_ylabel("accuracy (± 1 s.e.)")
    ax.set_title(f"{task}: {results['n_mcq']} questions")
    ax.legend(loc="upper right")
    ax_ppl.bar(names, ppl, color=colors)
    ax_ppl.set_ylabel("perplexity (lower is better)")
    ax_ppl.set_title(f"held-out test split: {results['n_test']} examples")
    for x, v in enumerate(ppl):
        ax_ppl.text(x, v, f"{v:.2f}", ha="center", va="bottom")
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------------- scaling up


def recipe_table(paths):
    """Key settings of each recipe, parsed with the same parser `medreason train` uses."""
    import pandas as pd

    from medreason.config import parse_config

    rows = {}
    for path in paths:
        args, sft, model = parse_config(["--config", str(path)])
        targets = model.lora_target_modules
        rows[Path(path).name] = {
            "model": model.model_name_or_path.split("/")[-1],
            "dataset": args.dataset if len(args.dataset) < 30 else args.dataset.split("/")[-1],
            "4-bit (QLoRA)": bool(model.load_in_4bit),
            "lora r / alpha": f"{model.lora_r} / {model.lora_alpha}",
            "targets": targets if isinstance(targets, str) else f"{len(targets)} modules",
            "rsLoRA / DoRA": f"{model.use_rslora} / {model.use_dora}",
            "learning rate": sft.learning_rate,
            "batch x accum": f"{sft.per_device_train_batch_size} x {sft.gradient_accumulation_steps}",
            "length": f"{sft.max_steps} steps" if sft.max_steps > 0 else f"{sft.num_train_epochs:g} epoch(s)",
            "max_length": sft.max_length,
            "precision": args.precision,
            "grad. checkpointing": sft.gradient_checkpointing,
            "packing": sft.packing,
        }
    return pd.DataFrame(rows)


def step_estimate_table(paths, train_rows: dict[str, int], tokens_per_example: float, world_sizes=(1,),
                        model_params: dict[str, float] | None = None, cpu_tokens_per_second: float | None = None,
                        gpu_flops: float = 100e12):
    """Optimizer steps, sequences and tokens per recipe and number of processes, from each recipe's batch
    settings and the training-set size of its dataset (`train_rows`: dataset -> rows). With `model_params`
    (model name -> parameters): training compute as 4 * params * tokens (forward 2N, backward through the
    frozen weights 2N; LoRA skips the base's weight gradients) and the time that takes at `gpu_flops`
    per GPU, a lower bound (perfect scaling over `processes` GPUs). With `cpu_tokens_per_second`
    (measured): the time on that CPU, for the recipes whose model is the one measured (SmolLM2-135M)."""
    import pandas as pd

    from medreason.config import parse_config

    rows = []
    for path in paths:
        args, sft, model = parse_config(["--config", str(path)])
        name = model.model_name_or_path.rstrip("/").split("/")[-1]
        n_train = train_rows.get(args.dataset, train_rows.get("bundled"))
        n_params = (model_params or {}).get(name)
        for world in world_sizes:
            per_step = sft.per_device_train_batch_size * sft.gradient_accumulation_steps * world
            if sft.max_steps > 0:
                steps = sft.max_steps
            else:
                steps = math.ceil(math.ceil(n_train / per_step) * sft.num_train_epochs)
            tokens = steps * per_step * min(tokens_per_example, sft.max_length or tokens_per_example)
            row = {"recipe": Path(path).name, "dataset": args.dataset.split("/")[-1], "processes": world,
                   "train rows": n_train, "sequences / step": per_step, "optimizer steps": steps,
                   "epochs": round(steps * per_step / n_train, 2), "tokens (M)": round(tokens / 1e6, 2)}
            if n_params:
                flops = 4 * n_params * tokens
                row["PFLOP"] = round(flops / 1e15, 2)
                row[f"GPU time at {gpu_flops / 1e12:.0f} TFLOP/s"] = _duration(flops / (gpu_flops * world))
            if cpu_tokens_per_second:
                # processes on one CPU share its cores: no speed-up from more of them
                row["time on this CPU"] = (_duration(tokens / cpu_tokens_per_second)
                                           if name.lower().startswith("smollm2-135m") else "-")
            rows.append(row)
    return pd.DataFrame(rows).set_index(["recipe", "processes"])


def measured_tokens_per_second(run_name: str = "smollm2-135m-cpu", experiment: str = "medreason") -> float | None:
    """Training throughput of the latest finished run called `run_name`, from the MLflow store: tokens
    trained on (TRL's cumulative `num_tokens`) between the first and the last logged step, over the time
    between them, so that evaluations before and after training do not count. None without such a run."""
    client = _client()
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return None
    runs = client.search_runs([exp.experiment_id], filter_string=f"attributes.run_name = '{run_name}' "
                              "and attributes.status = 'FINISHED'", order_by=["attributes.start_time DESC"],
                              max_results=1)
    if not runs:
        return None
    history = sorted(client.get_metric_history(runs[0].info.run_id, "num_tokens"), key=lambda m: m.step)
    if len(history) < 2 or history[-1].timestamp <= history[0].timestamp:
        return None
    first, last = history[0], history[-1]
    return (last.value - first.value) / ((last.timestamp - first.timestamp) / 1000)


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
