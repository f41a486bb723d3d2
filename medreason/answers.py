"""The model's answers to MCQ items, decoded once and kept: the answers evaluation grades (greedy, or K samples
each), from medreason.decode, cached under results/cache/generate/.

    from medreason.answers import answers_for
    outputs = answers_for(session, items, Decoding(max_new_tokens=256), use_adapter=True, batch_size=64, cache=True)
    outputs[i]   # [{"output", "tokens", "truncated"}, ...]: the item's answers (one when greedy)

The cache key is everything that decides an answer (medreason.fingerprint.generation_key: the sha256 of every
file the base model and the adapter load, where the base weights came from, dtype, device and the library
versions), the decoding settings, and the rendered prompt. Batch size is not in the key: batching changes greedy outputs only
through float rounding; each answer records the batch it was decoded in. The cache is written after every batch,
so an interrupted evaluation resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from medreason.decode import Decoding
from medreason.io import atomic_open

log = logging.getLogger(__name__)

CACHE_DIR = Path("results") / "cache" / "generate"


def mcq_prompts(session, items) -> list[str]:
    """Each item as the MCQ task prompts it (medreason.mcq.prompt_messages with the session's system prompt),
    through the chat template, ending with the assistant header."""
    from medreason.mcq import prompt_messages
    from medreason.session import prompt_text

    return [prompt_text(session, prompt_messages(item, session.system_prompt)) for item in items]


def answers_for(
    session, items, decoding: Decoding, use_adapter: bool, batch_size: int = 32, cache: bool = True, label: str = ""
) -> list[list[dict]]:
    """The answers to `items` (decoding.samples each) with the model as the caller set it (call inside
    `session.adapter_off()` for the base model); answers already in the cache are reused."""
    from medreason.decode import decode
    from medreason.progress import progress

    prompts = mcq_prompts(session, items)
    keys = [hashlib.sha256(p.encode()).hexdigest() for p in prompts]
    store = AnswerCache(session, use_adapter, decoding) if cache else None
    done = store.load() if store else {}
    todo = sorted({k: i for i, k in enumerate(keys) if k not in done}.values())
    if store and len(todo) < len(items):
        log.info(
            "%d of %d answers from the cache %s", len(items) - len({keys[i] for i in todo}), len(items), store.path
        )
    with progress(
        total=len(todo), desc=f"generate ({label or ('adapter' if use_adapter else 'base')})", unit="q"
    ) as bar:

        def keep(batch):
            for c in batch:
                done.setdefault(keys[todo[c.prompt]], []).append(
                    {"output": c.text, "tokens": c.tokens, "truncated": c.truncated, "batch_size": batch_size}
                )
            if store:
                store.save(done)
            bar.update(len({c.prompt for c in batch}))

        if todo:
            decode(
                session.model,
                session.tokenizer,
                [prompts[i] for i in todo],
                decoding,
                batch_size=batch_size,
                on_batch=keep,
            )
    return [done[k] for k in keys]


class AnswerCache:
    """Answers of one model and one decoding setting, by sha256 of the rendered prompt, in one JSONL file."""

    def __init__(self, session, use_adapter: bool, decoding: Decoding):
        from medreason.fingerprint import generation_key, key_digest  # every file the model loads, versions

        self.key = generation_key(session, use_adapter, decoding.key())
        self.path = CACHE_DIR / f"{key_digest(self.key)}.jsonl"
        self.samples = decoding.samples

    def load(self) -> dict[str, list[dict]]:
        if not self.path.is_file():
            return {}
        done = {}
        for line in self.path.read_text().splitlines():
            try:
                row = json.loads(line)
                answers = [{k: a[k] for k in ("output", "tokens", "truncated", "batch_size")} for a in row["answers"]]
            except (json.JSONDecodeError, KeyError, TypeError):  # a damaged line: those answers are decoded again
                continue
            if row.get("key") == self.key and len(answers) == self.samples:
                done[row["prompt_sha256"]] = answers
        return done

    def save(self, done: dict[str, list[dict]]):
        with atomic_open(self.path) as f:
            for prompt, answers in done.items():
                if len(answers) == self.samples:
                    row = {"prompt_sha256": prompt, "answers": answers, "key": self.key}
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")
