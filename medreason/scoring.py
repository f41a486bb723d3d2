"""Log-probabilities of labelled tokens: the one place medreason computes them, for training's dense LM head
(medreason.compat.use_dense_lm_head) and for the held-out loss of evaluation (medreason.evaluate.heldout_loss).

    from medreason.scoring import labelled_log_softmax
    log_softmax, targets, mask = labelled_log_softmax(model, labels, input_ids=ids, attention_mask=attention)
    nll = -log_softmax.gather(-1, targets[:, None]).sum()

Only the positions that carry a label (not -100) go through the output layer: the full [batch, length, vocabulary]
logits would be ~50x larger and dominate the time on a CPU.
"""

from __future__ import annotations


def labelled_log_softmax(model, labels, *args, **inputs):
    """(log-softmax over the vocabulary at each labelled position, fp32 [n, vocab]; the next-token targets [n];
    the mask of labelled positions [batch, length - 1]). `model`: a causal LM or a PEFT model around one (whose
    LoRA layers live inside the base model's own modules, so the adapter is on unless disabled); `labels`: the
    input ids with -100 where no loss is taken; `args`/`inputs`: what the decoder takes (input_ids, attention_mask)."""
    import torch

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    hidden = base.base_model(*args, **inputs).last_hidden_state[:, :-1]
    labels = labels[:, 1:].to(hidden.device)
    mask = labels != -100
    logits = base.get_output_embeddings()(hidden[mask]).float()
    return torch.log_softmax(logits, dim=-1), labels[mask], mask
