"""medreason's SFTTrainer: TRL's own, with two documented overrides and nothing else.

    from medreason.trainer import MedreasonSFTTrainer
    trainer = MedreasonSFTTrainer(model=..., args=sft_config, ..., lm_head="auto")

1. **Dense LM head on CPUs** (`lm_head`: auto | dense | fused). TRL 1.16's SFTTrainer patches the model's forward so
   that `model(..., fused_lm_head=True)` returns per-token log-probabilities, entropy and top-1 hits computed in
   vocabulary tiles (a Triton kernel on GPUs). On a CPU that falls back to torch code that walks each tile several
   times; the dense head below computes the same fields from the logits of the labelled positions at once. It wraps
   TRL's patched forward, so it depends on that forward's keyword arguments and on `FusedCausalLMOutput`: it is
   applied only on the TRL versions in VERIFIED_TRL (checked at run time; elsewhere TRL's head stays, with a log
   line), and `tests/test_train.py` checks it equals TRL's head.
2. **Metric names follow the split.** TRL names the metrics it adds during any evaluation `eval_*`; evaluating the
   test split with `metric_key_prefix="test"` then reported the test split's token accuracy as
   `eval_mean_token_accuracy`, overwriting the validation figure. Here they take the evaluated split's prefix.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

# TRL releases whose fused-head forward (keywords fused_lm_head/labels/shift_labels/num_items_in_batch, output
# FusedCausalLMOutput) the dense head was checked against.
VERIFIED_TRL = ("1.16",)


def trainer_class():
    """The SFTTrainer subclass (built on first use, so that importing this module does not import TRL)."""
    from trl import SFTTrainer

    class MedreasonSFTTrainer(SFTTrainer):
        _metric_prefix = "eval"

        def __init__(self, *args, lm_head: str = "auto", **kwargs):
            super().__init__(*args, **kwargs)
            if wants_dense_head(lm_head, self.args):
                use_dense_lm_head(self.model)
            else:
                log.info("lm_head: TRL's fused head (lm_head %s on %s)", lm_head, self.args.device.type)

        def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"):
            self._metric_prefix = metric_key_prefix
            try:
                return super().evaluate(eval_dataset, ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix)
            finally:
                self._metric_prefix = "eval"

        def log(self, logs: dict, start_time=None):
            if self._metric_prefix == "eval" or self.model.training:
                return super().log(logs, start_time)
            prefixed = _Prefixed(logs, self._metric_prefix)
            super().log(prefixed, start_time)
            logs.update(dict(prefixed))  # Trainer.evaluate returns this dict: TRL's additions belong in it too

    return MedreasonSFTTrainer


class _Prefixed(dict):
    """The logs dict TRL's `log` adds its `eval_*` metrics to (with `update`), renaming them to `<prefix>_*`."""

    def __init__(self, logs: dict, prefix: str):
        super().__init__(logs)
        self.prefix = prefix

    def update(self, other=(), **kw):
        items = dict(other, **kw).items()
        super().update({(f"{self.prefix}_{k[5:]}" if k.startswith("eval_") else k): v for k, v in items})


def wants_dense_head(lm_head: str, training_args) -> bool:
    """auto: dense where the trainer computes on a CPU. Decided from the training arguments' device (cpu under
    use_cpu or without CUDA), which every rank computes alike, not from where a parameter lies: under FSDP's
    memory-efficient loading rank 0 holds its weights on the CPU and the others on the meta device, and ranks
    that chose different heads would hang in the fused head's `full_tensor()` collective."""
    if lm_head == "auto":
        return training_args.device.type == "cpu"
    return lm_head == "dense"


def trl_verified() -> bool:
    import trl

    return any(trl.__version__ == v or trl.__version__.startswith(v + ".") for v in VERIFIED_TRL)


def use_dense_lm_head(model):
    """Replace TRL's fused LM head with a dense one for the forward passes that compute the loss.

    TRL's SFTTrainer patches the model so that `model(..., fused_lm_head=True)` returns per-token
    log-probabilities, entropy and top-1 hits computed in vocabulary tiles, never building the full logits. On
    a GPU a Triton kernel does that in one pass; on a CPU it falls back to torch code that walks each tile
    several times in fp32. Here (SmolLM2-135M, 1,200 tokens, bf16) that fallback takes 1.8 s per step against
    0.5 s for the plain logits of the labelled positions and one log-softmax: a third of the whole step.
    This computes the same fields (in fp32, from bf16 logits) from the logits of the positions that carry a
    label only, and leaves every other call (generation, plain forwards) to the original forward. Models whose
    head scales or soft-caps its logits, or that add a router loss, keep TRL's head.
    """
    import functools

    import torch
    import trl
    from trl.trainer.utils import FusedCausalLMOutput

    if not trl_verified():
        log.info("lm_head: the dense head was verified on TRL %s, this is TRL %s: keeping TRL's fused head",
                 ", ".join(VERIFIED_TRL), trl.__version__)
        return

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = base.config.get_text_config()
    special = ("final_logit_softcapping", "logit_scale", "output_multiplier", "lm_head_multiplier",
               "logits_scaling", "output_router_logits")
    if any(getattr(config, name, None) for name in special):
        log.info("lm_head: %s scales its logits or adds a router loss: keeping TRL's fused head",
                 config.model_type)
        return
    fused_forward = base.forward  # TRL's patched forward, kept for every call this does not handle

    @functools.wraps(type(base).forward)
    def forward(*args, fused_lm_head=False, labels=None, shift_labels=None, num_items_in_batch=None, **kwargs):
        if not fused_lm_head or labels is None or shift_labels is not None:
            return fused_forward(*args, fused_lm_head=fused_lm_head, labels=labels, shift_labels=shift_labels,
                                 num_items_in_batch=num_items_in_batch, **kwargs)
        kwargs["use_cache"] = False
        hidden = base.base_model(*args, **kwargs).last_hidden_state[:, :-1]
        labels = labels[:, 1:].to(hidden.device)
        mask = labels != -100
        targets = labels[mask]
        log_softmax = torch.log_softmax(base.get_output_embeddings()(hidden[mask]).float(), dim=-1)
        token_log_probs = log_softmax.gather(-1, targets[:, None]).squeeze(-1)
        with torch.no_grad():
            entropy = -(log_softmax.exp() * log_softmax).sum(-1)
            is_top1 = log_softmax.argmax(-1) == targets

        def per_position(values):  # zero where the label is -100, like TRL's head
            return values.new_zeros(mask.shape).masked_scatter(mask, values)

        log_probs = per_position(token_log_probs)
        denominator = mask.sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch
        return FusedCausalLMOutput(loss=-log_probs.sum() / denominator, log_probs=log_probs,
                                   entropy=per_position(entropy), is_top1=per_position(is_top1), label_mask=mask)

    forward.dense_lm_head = True  # lets callers (and tests) see which head is in place
    base.forward = forward
    log.info("lm_head: dense (the logits of labelled positions; TRL's chunked head is for GPUs)")
