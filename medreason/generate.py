"""`medreason chat`: answers from the base model and from a LoRA adapter, streamed or batched.

    medreason chat --adapter lora_adapter/SmolLM2-135M-Instruct                  # interactive, streamed
    medreason chat --adapter lora_adapter/SmolLM2-135M-Instruct --prompt "..." --greedy
    medreason chat --adapter lora_adapter/SmolLM2-135M-Instruct --compare --prompt "..."
    medreason chat --adapter DIR --questions questions.txt --out results/answers.jsonl

    from medreason.generate import load_for_inference, answer, compare
    session = load_for_inference("lora_adapter/SmolLM2-135M-Instruct")
    compare(session, ["A 24-year-old ..."], Sampling(greedy=True))

`--compare` holds ONE copy of the base weights: the base model's answer is generated inside PEFT's
`disable_adapter()` context, the adapter's answer outside it.
"""

from __future__ import annotations

import json
import logging
import sys
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

from medreason.config import DEFAULT_SYSTEM_PROMPT
from medreason.errors import UserError

log = logging.getLogger(__name__)


@dataclass
class Sampling:
    """Decoding settings; greedy=True ignores temperature/top_p and is deterministic."""

    max_new_tokens: int = 256
    temperature: float = 0.7
    top_p: float = 0.9
    repetition_penalty: float = 1.1
    greedy: bool = False
    seed: int = 0

    def kwargs(self) -> dict:
        if self.max_new_tokens < 1:
            raise UserError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if self.greedy:
            return {
                "do_sample": False,
                "max_new_tokens": self.max_new_tokens,
                "repetition_penalty": self.repetition_penalty,
                "temperature": None,
                "top_p": None,
                "top_k": None,
            }
        if self.temperature <= 0:
            raise UserError(
                f"temperature must be positive (use --greedy for deterministic answers), got {self.temperature}"
            )
        if not 0 < self.top_p <= 1:
            raise UserError(f"top_p must be in (0, 1], got {self.top_p}")
        return {
            "do_sample": True,
            "max_new_tokens": self.max_new_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "repetition_penalty": self.repetition_penalty,
            "top_k": None,
        }


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


@dataclass
class Answer:
    question: str
    text: str
    reasoning: str
    final: str
    new_tokens: int
    source: str  # "base" or "adapter"


# --------------------------------------------------------------------------------------------- loading


def load_for_inference(adapter: str | None = None, model: str | None = None, dtype=None) -> Session:
    """The base model (+ the adapter, if given), ready to generate. Checks the adapter fits the base."""
    import torch

    from medreason.adapter import check_adapter_fits, load_adapter
    from medreason.compat import cpu_supports_bf16
    from medreason.models import DEFAULT_MODEL, load_model_and_tokenizer

    meta = read_adapter_meta(adapter) if adapter else {}
    base = model or meta.get("base_model") or DEFAULT_MODEL
    if adapter and model and not same_model(model, meta["base_model"]):
        raise UserError(f"adapter {adapter} was trained on {meta['base_model']}, not on {model}")
    vocab = meta.get("vocab_size")
    if adapter and vocab is not None:  # checked on the tokenizer alone, before the weights load
        from medreason.models import load_tokenizer

        n_tokens = len(load_tokenizer(base))
        if vocab != n_tokens:
            raise UserError(f"adapter {adapter} was trained with a vocabulary of {vocab} tokens; {base} has {n_tokens}")
    if adapter:  # whole or not at all: every saved tensor used, every LoRA module filled (before the weights load)
        check_adapter_fits(adapter, base)
    if dtype is None:  # bf16 where the hardware multiplies it natively, fp32 elsewhere
        native = torch.cuda.is_available() or cpu_supports_bf16()
        dtype = torch.bfloat16 if native else torch.float32
    base_model, tokenizer = load_model_and_tokenizer(base, dtype=dtype)
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
    return Session(base_model, tokenizer, base)


def read_adapter_meta(adapter: str) -> dict:
    """The adapter folder's metadata, validated (medreason.adapter.read_adapter)."""
    from medreason.adapter import read_adapter

    return read_adapter(adapter)


def same_model(a: str, b: str) -> bool:
    """Same model whether named by Hub id or by a folder of the same name."""
    return a.rstrip("/").split("/")[-1].lower() == b.rstrip("/").split("/")[-1].lower()


# --------------------------------------------------------------------------------------------- generation


def answer(
    session: Session, questions: list[str], sampling: Sampling | None = None, *, use_adapter: bool = True, streamer=None
) -> list[Answer]:
    """Answer a batch of questions (left-padded, KV cache on); `streamer` streams a single question."""
    import torch

    sampling = sampling or Sampling()
    for q in questions:
        if not q or not q.strip():
            raise UserError("empty prompt: ask a question")
    prompts = [prompt_text(session, q) for q in questions]
    torch.manual_seed(sampling.seed)
    ctx = nullcontext() if use_adapter else session.adapter_off()
    with ctx:
        outputs = generate(session, prompts, streamer=streamer, **sampling.kwargs())
    answers = []
    for q, out in zip(questions, outputs):
        reasoning, final = split_reasoning(out["output"], session.template)
        answers.append(
            Answer(
                q,
                out["output"],
                reasoning,
                final,
                out["tokens"],
                "adapter" if use_adapter and session.adapter else "base",
            )
        )
    return answers


def generate(session: Session, prompts: list[str], *, streamer=None, **generation) -> list[dict]:
    """Continuations of already-templated prompts in one left-padded batch with the KV cache on:
    {"output", "tokens", "truncated"} each. `tokens` counts what was generated up to the end-of-turn token;
    `truncated` means max_new_tokens ran out first. `generation`: model.generate's own keywords."""
    import torch

    tok, model = session.tokenizer, session.model
    side, tok.padding_side = tok.padding_side, "left"  # generation continues from the right end of every row
    try:
        batch = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
    finally:
        tok.padding_side = side
    with torch.inference_mode():
        out = model.generate(**batch, **generation, streamer=streamer, use_cache=True, pad_token_id=tok.pad_token_id)
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    stop = set(eos if isinstance(eos, (list, tuple)) else [eos] if eos is not None else []) | {tok.eos_token_id}
    results = []
    for row in out[:, batch["input_ids"].shape[1] :].tolist():
        end = next((j for j, t in enumerate(row) if t in stop), None)
        ids = row if end is None else row[:end]
        results.append(
            {"output": tok.decode(ids, skip_special_tokens=True).strip(), "tokens": len(ids), "truncated": end is None}
        )
    return results


def compare(session: Session, questions: list[str], sampling: Sampling | None = None) -> list[tuple[Answer, Answer]]:
    """(base answer, adapter answer) per question, from one copy of the base weights."""
    if not session.adapter:
        raise UserError("--compare needs --adapter: the comparison is base model vs base model + adapter")
    base = answer(session, questions, sampling, use_adapter=False)
    tuned = answer(session, questions, sampling, use_adapter=True)
    return list(zip(base, tuned))


def split_reasoning(text: str, template: str = "think") -> tuple[str, str]:
    """(reasoning, final answer) from a completion in the adapter's template (medreason.template.split)."""
    from medreason.template import split

    return split(text, template)


# --------------------------------------------------------------------------------------------- CLI


DISCLAIMER = "(for teaching; not medical advice)"


def cli(args) -> int:
    from medreason.guards import base_model, check_prompt_sizes, inputs, refuse_saves_onto_inputs

    sampling = Sampling(
        args.max_new_tokens, args.temperature, args.top_p, args.repetition_penalty, args.greedy, args.seed
    )
    sampling.kwargs()  # bad sampling values fail before the model loads
    if args.prompt is not None and not args.prompt.strip():
        raise UserError("empty prompt: --prompt needs a question")
    if args.compare and not args.adapter:
        raise UserError("--compare needs --adapter: the comparison is base model vs base model + adapter")
    questions = read_questions(args.questions) if args.questions else None
    if questions is not None:  # --out never lands on the questions, the adapter or the base model
        refuse_saves_onto_inputs(
            {"--out": args.out or "results/chat.jsonl"}, inputs(args.model, args.adapter, [args.questions])
        )
    texts = questions or ([args.prompt] if args.prompt else [])  # each must fit the context with its answer
    check_prompt_sizes(texts, base_model(args.model, args.adapter), args.max_new_tokens, args.questions or "")
    session = load_for_inference(args.adapter, args.model)
    if questions is not None:
        return _batch(session, questions, sampling, args)
    if args.prompt is not None:
        _one(session, args.prompt, sampling, args.compare)
        return 0
    return _interactive(session, sampling, args.compare)


def _one(session, question, sampling, compare_both):
    if compare_both:
        ((b, a),) = compare(session, [question], sampling)
        print_answer("base model", b)
        print_answer(f"with adapter ({session.adapter})", a)
    else:
        label = f"with adapter ({session.adapter})" if session.adapter else f"base model ({session.base_model})"
        print_answer(label, answer(session, [question], sampling)[0])


def print_answer(label: str, a: Answer):
    print(f"=== {label} {DISCLAIMER}")
    if a.reasoning:
        print("--- reasoning")
        print(a.reasoning)
        print("--- answer")
    print(a.final or "(no final answer: the reasoning used all max_new_tokens)")
    print()


def _interactive(session, sampling, compare_both) -> int:
    from transformers import TextStreamer

    print(f"medreason chat {DISCLAIMER}; quit with 'exit', 'quit', Ctrl-D or Ctrl-C")
    streamer = TextStreamer(session.tokenizer, skip_prompt=True, skip_special_tokens=True)
    while True:
        try:
            question = input("\nyou> ")
        except (EOFError, KeyboardInterrupt):
            print()
            return 0
        if question.strip().lower() in ("exit", "quit"):
            return 0
        if not question.strip():
            continue
        try:
            if compare_both:
                print("base>", end=" ", flush=True)
                answer(session, [question], sampling, use_adapter=False, streamer=streamer)
                print("adapter>", end=" ", flush=True)
                answer(session, [question], sampling, use_adapter=True, streamer=streamer)
            else:
                print("model>", end=" ", flush=True)
                answer(session, [question], sampling, streamer=streamer)
        except KeyboardInterrupt:  # stop this answer, keep the session
            print("\n(interrupted)")


def read_questions(path: str) -> list[str]:
    """One question per line (.txt), or JSONL rows with a 'question' or 'Question' field."""
    from medreason.readers import read_text

    p = Path(path)
    if not p.is_file():
        raise UserError(f"{path}: file not found")
    questions = []
    for n, line in enumerate(read_text(p).split("\n"), 1):  # named when not UTF-8 or too large; editor lines
        if not line.strip():
            continue
        if p.suffix == ".jsonl":
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path} line {n}: not valid JSON ({e.msg})") from e
            q = row.get("question") or row.get("Question") if isinstance(row, dict) else None
            if not isinstance(q, str) or not q.strip():
                raise UserError(f'{path} line {n}: field "question" is missing or empty')
            questions.append(q)
        else:
            questions.append(line)
    if not questions:
        raise UserError(f"{path}: no questions")
    return questions


def _batch(session, questions, sampling, args) -> int:
    from medreason.io import atomic_open
    from medreason.progress import progress

    out = Path(args.out or "results/chat.jsonl")
    desc = "answer (base and adapter)" if args.compare else "answer"
    with atomic_open(out) as f, progress(total=len(questions), desc=desc, unit="q") as bar:
        for i in range(0, len(questions), 8):
            chunk = questions[i : i + 8]
            pairs = (
                compare(session, chunk, sampling)
                if args.compare
                else [(None, a) for a in answer(session, chunk, sampling)]
            )
            bar.update(len(chunk))
            for base, a in pairs:
                row = {"question": a.question, "reasoning": a.reasoning, "answer": a.final, "source": a.source}
                if base is not None:
                    row["base_reasoning"], row["base_answer"] = base.reasoning, base.final
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"{len(questions)} answers written to {out}", file=sys.stderr)
    return 0


# --------------------------------------------------------------------------------------------- probing


def prompt_text(session: Session, question: str) -> str:
    """The text the model reads before its answer: system prompt and question through the chat template,
    ending with the assistant header (as `answer` builds it)."""
    return session.tokenizer.apply_chat_template(
        [{"role": "system", "content": session.system_prompt}, {"role": "user", "content": question.strip()}],
        tokenize=False,
        add_generation_prompt=True,
    )


def start_probability(session: Session, questions: list[str], start: str = "<think>\n"):
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
        prompt = prompt_text(session, question)
        prompt_ids = tok(prompt, add_special_tokens=False)["input_ids"]
        full_ids = tok(prompt + start, add_special_tokens=False)["input_ids"]
        if full_ids[: len(prompt_ids)] != prompt_ids:  # the start merged with the prompt's last token
            full_ids = prompt_ids + tok(start, add_special_tokens=False)["input_ids"]
        start_ids = torch.tensor(full_ids[len(prompt_ids) :])
        row = {"question": i}
        for name, use_adapter in variants:
            ctx = contextlib.nullcontext() if use_adapter else session.adapter_off()
            with ctx, torch.inference_mode():
                logits = session.model(input_ids=torch.tensor([full_ids], device=session.model.device)).logits
            logp = torch.log_softmax(logits[0, len(prompt_ids) - 1 : -1].float().cpu(), dim=-1)
            row[f"P(start | {name})"] = float(logp.gather(1, start_ids[:, None]).sum().exp())
            row[f"first token {name}"] = repr(tok.decode([int(logp[0].argmax())]))
        if session.adapter:
            row["adapter / base"] = row["P(start | adapter)"] / max(row["P(start | base)"], 1e-300)
        rows.append(row)
    return pd.DataFrame(rows).set_index("question")
