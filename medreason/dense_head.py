"""The dense LM head: on CPUs, the loss reads the output layer only at the positions that carry a label.

    from medreason.dense_head import use_dense_lm_head, wants_dense_head
    if wants_dense_head("auto", trainer.args):   # dense on CPUs, TRL's fused head elsewhere
        use_dense_lm_head(trainer.model)

TRL's SFTTrainer and GRPOTrainer patch the model so that `model(..., fused_lm_head=True)` returns per-token
log-probabilities computed in vocabulary tiles. This replaces that forward for the loss only, with the fields
TRL reads (a reach into TRL's private output class, guarded by medreason.compat: on a TRL it was not checked
against, TRL's head stays and a log line says so).
"""

from __future__ import annotations

import logging

from medreason import compat

log = logging.getLogger(__name__)


def wants_dense_head(lm_head: str, training_args) -> bool:
    """auto: dense where the trainer computes on a CPU. Decided from the training arguments' device (cpu under
    use_cpu or without CUDA), which every rank computes alike, not from where a parameter lies: under FSDP's
    memory-efficient loading rank 0 holds its weights on the CPU and the others on the meta device, and ranks
    that chose different heads would hang in the fused head's `full_tensor()` collective."""
    if lm_head == "auto":
        return training_args.device.type == "cpu"
    return lm_head == "dense"


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

    from medreason.scoring import labelled_log_softmax

    if not compat.verified("dense_lm_head"):
        compat.unverified("dense_lm_head", "keeping TRL's fused head")
        return

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = base.config.get_text_config()
    special = (
        "final_logit_softcapping",
        "logit_scale",
        "output_multiplier",
        "lm_head_multiplier",
        "logits_scaling",
        "output_router_logits",
    )
    if any(getattr(config, name, None) for name in special):
        log.info("lm_head: %s scales its logits or adds a router loss: keeping TRL's fused head", config.model_type)
        return
    fused_forward = base.forward  # TRL's patched forward, kept for every call this does not handle

    @functools.wraps(type(base).forward)
    def forward(*args, fused_lm_head=False, labels=None, shift_labels=None, num_items_in_batch=None, **kwargs):
        if not fused_lm_head or labels is None or shift_labels is not None:
            return fused_forward(
                *args,
                fused_lm_head=fused_lm_head,
                labels=labels,
                shift_labels=shift_labels,
                num_items_in_batch=num_items_in_batch,
                **kwargs,
            )
        kwargs["use_cache"] = False
        log_softmax, targets, mask = labelled_log_softmax(base, labels, *args, **kwargs)
        token_log_probs = log_softmax.gather(-1, targets[:, None]).squeeze(-1)
        with torch.no_grad():
            entropy = -(log_softmax.exp() * log_softmax).sum(-1)
            is_top1 = log_softmax.argmax(-1) == targets

        def per_position(values):  # zero where the label is -100, like TRL's head
            return values.new_zeros(mask.shape).masked_scatter(mask, values)

        log_probs = per_position(token_log_probs)
        denominator = mask.sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch
        return compat.fused_head_output(
            loss=-log_probs.sum() / denominator,
            log_probs=log_probs,
            entropy=per_position(entropy),
            is_top1=per_position(is_top1),
            label_mask=mask,
        )

    forward.dense_lm_head = True  # lets callers (and tests) see which head is in place
    base.forward = forward
    log.info("lm_head: dense (the logits of labelled positions; TRL's chunked head is for GPUs)")
