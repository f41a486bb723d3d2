"""A model loaded for inference: the base model and, when given, a LoRA adapter on one copy of its weights, with
what is needed to prompt it and to name it exactly. Chat, evaluation and export load through here.

    from medreason.session import load_for_inference
    session = load_for_inference("lora_adapter/SmolLM2-135M-Instruct")   # checks the adapter fits, then loads
    with session.adapter_off():                                             # the plain base model
        ...

The adapter variant and the base variant share the base weights: the base answers inside PEFT's
`disable_adapter()` context.
"""

from __future__ import annotations

import logging
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

from medreason.config import DEFAULT_SYSTEM_PROMPT
from medreason.errors import UserError

log = logging.getLogger(__name__)


@dataclass
class Session:
    """A loaded model (a PeftModel when an adapter is given) with what is needed to prompt it."""

    model: object
    tokenizer: object
    base_model: str
    adapter: str | None = None
    template: str = "think"
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    meta: dict = field(default_factory=dict)

    def adapter_off(self):
        """Context in which the model answers as the plain base model."""
        return self.model.disable_adapter() if self.adapter else nullcontext()


def load_for_inference(adapter: str | None = None, model: str | None = None, dtype=None) -> Session:
    """The base model (+ the adapter, if given), ready to generate. The adapter is checked against the base
    (base model, vocabulary) before any weight loads; `dtype` None: bf16 where the hardware multiplies it
    natively, fp32 elsewhere (medreason.distributed.inference_dtype)."""
    import torch

    from medreason.adapter import check_adapter_fits, load_adapter, read_adapter, read_trained
    from medreason.distributed import inference_dtype
    from medreason.models import DEFAULT_MODEL, load_model_and_tokenizer, load_tokenizer, same_model

    meta = read_adapter(adapter) if adapter else {}
    base = model or meta.get("base_model") or DEFAULT_MODEL
    if adapter and model and not same_model(model, meta["base_model"]):
        raise UserError(f"adapter {adapter} was trained on {meta['base_model']}, not on {model}")
    vocab = meta.get("vocab_size")
    if adapter and vocab is not None:  # checked on the tokenizer alone, before the weights load
        n_tokens = len(load_tokenizer(base))
        if vocab != n_tokens:
            raise UserError(f"adapter {adapter} was trained with a vocabulary of {vocab} tokens; {base} has {n_tokens}")
    if adapter:  # whole or not at all: every saved tensor used, every LoRA module filled (before the weights load)
        check_adapter_fits(adapter, base)
    base_model, tokenizer = load_model_and_tokenizer(base, dtype=dtype or inference_dtype())
    if torch.cuda.is_available():
        base_model = base_model.to("cuda")
    if adapter:
        peft_model = load_adapter(base_model, adapter)
        peft_model.eval()
        return Session(
            peft_model,
            tokenizer,
            base,
            adapter,
            meta.get("template", "think"),
            meta.get("system_prompt", DEFAULT_SYSTEM_PROMPT),
            meta,
        )
    base_model.eval()
    trained = read_trained(base) if Path(base).is_dir() else None  # a fully fine-tuned model: its prompt format
    if trained:
        return Session(
            base_model,
            tokenizer,
            base,
            template=trained.get("template", "think"),
            system_prompt=trained.get("system_prompt", DEFAULT_SYSTEM_PROMPT),
            meta=trained,
        )
    return Session(base_model, tokenizer, base)


def prompt_text(session: Session, messages: list[dict]) -> str:
    """Chat messages through the session's chat template, ending with the assistant header: what the model reads
    before its answer."""
    return session.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def question_messages(session: Session, question: str) -> list[dict]:
    """A free question as chat messages: the session's system prompt, then the question."""
    from medreason.template import system_messages

    return system_messages(session.system_prompt) + [{"role": "user", "content": question.strip()}]
