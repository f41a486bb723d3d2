"""Tokenising a prompt/completion pair, in one place: where the completion starts (TRL's rule), which tokens
carry the loss, and what max_length does to an example. Training data, the held-out loss and the probes of the
inference chapter all call this, so they agree with the trainer.

    from medreason.tokens import pair_ids, fit_max_length, label_mask
    ids, start = pair_ids(tokenizer, prompt_messages, completion_messages)   # ids[start:] is the completion
    fit_max_length(dataset, tokenizer, 512)      # kept, truncated and dropped examples, as SFTTrainer will treat them
    label_mask(tokenizer, example)               # (token, carries loss) exactly as SFTTrainer collates it

TRL 1.16's SFTTrainer tokenises the prompt (with the generation prompt) and prompt + completion through the chat
template, and the completion starts where the two diverge (TRL's `common_prefix_length`): usually
right after the prompt, earlier when a chat template renders the prompt alone differently or tokens merge
across the boundary. That rule is a reach into how TRL tokenises (medreason.compat, "completion_boundary").
"""

from __future__ import annotations


def common_prefix_length(a: list[int], b: list[int]) -> int:
    """How many leading tokens two sequences share: where TRL's SFTTrainer starts the completion."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def boundary(prompt_ids: list[int], full_ids: list[int]) -> int:
    """Where the completion starts in `full_ids`, by TRL's rule (the common prefix with the tokenised prompt)."""
    from medreason.compat import unverified, verified

    if not verified("completion_boundary"):
        unverified("completion_boundary", "the completion starts after the prompt and full sequence's common prefix")
    return common_prefix_length(prompt_ids, full_ids)


def pair_ids(tokenizer, prompt: list[dict], completion: list[dict]) -> tuple[list[int], int]:
    """(prompt + completion tokenised through the chat template, where the completion starts)."""
    prompt_ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=True)[
        "input_ids"
    ]
    full_ids = tokenizer.apply_chat_template(prompt + completion, tokenize=True, return_dict=True)["input_ids"]
    return full_ids, boundary(prompt_ids, full_ids)


def text_pair_ids(tokenizer, prompt_text: str, completion_text: str) -> tuple[list[int], int]:
    """The same for an already-templated prompt followed by raw completion text (what generation continues)."""
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    full_ids = tokenizer(prompt_text + completion_text, add_special_tokens=False)["input_ids"]
    return full_ids, boundary(prompt_ids, full_ids)


def fit_max_length(
    ds, tokenizer, max_length: int | None, truncation_mode: str = "keep_start", completion_only_loss: bool | None = None
) -> dict:
    """What TRL 1.16's SFTTrainer will do with each example at `max_length`, counted before training.

    The trainer keeps the first `max_length` tokens (`truncation_mode="keep_start"`) and then drops every example
    left without a single completion token: one whose prompt alone fills `max_length` contributes no loss. It does
    so silently, so the counts come from here. Returns {"kept", "truncated" (kept, completion cut short),
    "dropped" (prompt >= max_length), "dropped_rows" (their indices)}. TRL's one alternative,
    `truncation_mode="keep_end"`, is deprecated in TRL 1.16; the SFT recipe drops these examples itself and says
    how many."""
    out = {"kept": 0, "truncated": 0, "dropped": 0, "dropped_rows": []}
    # keep_end keeps the completion's end, and without completion-only loss every token has a label: nothing
    # is dropped then
    drops = max_length is not None and truncation_mode == "keep_start" and completion_only_loss is not False
    for i, ex in enumerate(ds):
        full, start = pair_ids(tokenizer, ex["prompt"], ex["completion"])
        if max_length is None or len(full) <= max_length:
            out["kept"] += 1
        elif drops and start >= max_length:
            out["dropped"] += 1
            out["dropped_rows"].append(i)
        else:
            out["kept"] += 1
            out["truncated"] += 1
    return out


def token_lengths(ds, tokenizer) -> list[int]:
    """Tokens per example as the trainer sees it: the chat template over prompt + completion."""
    return [
        len(
            tokenizer.apply_chat_template(ex["prompt"] + ex["completion"], tokenize=True, return_dict=True)["input_ids"]
        )
        for ex in ds
    ]


def label_mask(tokenizer, example: dict, max_length: int = 1024) -> list[tuple[str, bool]]:
    """(token text, carries loss) for one prompt-completion example, tokenised and collated by TRL's own
    SFTTrainer exactly as in training: a tiny random model stands in, since weights do not affect labels."""
    import tempfile

    import torch
    import trl
    from datasets import Dataset
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config).to(torch.float32)
    with tempfile.TemporaryDirectory() as tmp:
        args = trl.SFTConfig(
            output_dir=tmp, max_length=max_length, report_to=[], bf16=False, use_cpu=True, disable_tqdm=True
        )
        trainer = trl.SFTTrainer(
            model=model, args=args, processing_class=tokenizer, train_dataset=Dataset.from_list([example])
        )
        batch = trainer.data_collator([trainer.train_dataset[0]])
    ids, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()
    return [(tokenizer.decode([i]), label != -100) for i, label in zip(ids, labels)]
