"""Log-probabilities of labelled tokens: the one place medreason computes them, for training's dense LM head
(medreason.dense_head) and for the held-out loss of evaluation (`heldout_loss`, below).

    log_softmax, targets, mask = labelled_log_softmax(model, labels, input_ids=ids, attention_mask=attention)
    nll = -log_softmax.gather(-1, targets[:, None]).sum()

Only the positions that carry a label (not -100) go through the output layer: the full [batch, length, vocabulary]
logits would be ~50x larger and dominate the time on a CPU.
"""

from __future__ import annotations

from pathlib import Path

from medreason.errors import UserError


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


def heldout_loss(model, tokenizer, dataset, batch_size: int = 8) -> float:
    """Mean negative log-likelihood per completion token (prompt tokens masked, as in training)."""
    import torch

    from medreason.progress import progress
    from medreason.tokens import pair_ids

    # the completion starts where training starts it (medreason.tokens: TRL's rule)
    examples = [pair_ids(tokenizer, ex["prompt"], ex["completion"]) for ex in dataset]
    examples.sort(key=lambda e: len(e[0]))  # similar lengths together: little padding
    total_nll, total_tokens = 0.0, 0
    device = next(model.parameters()).device
    model.eval()
    with torch.inference_mode(), progress(total=len(examples), desc="held-out loss", unit="ex") as bar:
        for i in range(0, len(examples), batch_size):
            chunk = examples[i : i + batch_size]
            bar.update(len(chunk))
            width = max(len(ids) for ids, _ in chunk)
            input_ids = torch.full((len(chunk), width), tokenizer.pad_token_id, dtype=torch.long)
            attention = torch.zeros((len(chunk), width), dtype=torch.long)
            labels = torch.full((len(chunk), width), -100, dtype=torch.long)
            for j, (ids, n_prompt) in enumerate(chunk):
                input_ids[j, : len(ids)] = torch.tensor(ids)
                attention[j, : len(ids)] = 1
                labels[j, n_prompt : len(ids)] = torch.tensor(ids[n_prompt:])
            # as training's dense head computes them (medreason.scoring)
            log_softmax, targets, mask = labelled_log_softmax(
                model, labels, input_ids=input_ids.to(device), attention_mask=attention.to(device)
            )
            total_nll -= log_softmax.gather(-1, targets[:, None]).sum().item()
            total_tokens += int(mask.sum())
    return total_nll / max(1, total_tokens)


# --------------------------------------------------------------------------------------------- the adapter's test split


def adapter_test_split(session, limit: int | None):
    """The test split of the data the adapter was trained on (its first `limit` rows), rebuilt exactly."""
    from medreason.data import load_splits

    test = load_splits(**training_data(session))["test"]
    return test if limit is None else test.select(range(min(limit, len(test))))


def training_data(session) -> dict:
    """load_splits arguments that rebuild the adapter's own test split: every data argument it was trained with
    (medreason.json "data"), and a check that the file still has the content it was trained on. Without an
    adapter (or for an adapter from before these records), the bundled corpus with the session's template."""
    data = session.meta.get("data") or {}
    if not data.get("args"):
        return {
            "dataset": session.meta.get("dataset") or "bundled",
            "template": session.template,
            "system_prompt": session.system_prompt,
        }
    if data.get("kind") in ("file", "bundled") and data.get("sha256"):
        from medreason.io import sha256_file

        path = Path(data["path"])
        if not path.is_file():
            raise UserError(f"adapter {session.adapter} was trained on {path}, which no longer exists")
        if sha256_file(path) != data["sha256"]:
            raise UserError(
                f"{path} changed since adapter {session.adapter} was trained on it (sha256 differs): "
                f"its test split cannot be rebuilt"
            )
    return {"dataset": data.get("dataset", "bundled"), **data["args"]}
