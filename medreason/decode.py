"""One decode loop for everything medreason generates: evaluation (greedy, and K samples each for pass@k), chat,
and GRPO's rollouts (handed to TRL as its `rollout_func`).

    from medreason.decode import Decoding, decode
    done = decode(model, tokenizer, prompts, Decoding(max_new_tokens=256))                    # greedy
    done = decode(model, tokenizer, prompts, Decoding(greedy=False, samples=8, seed=0))       # 8 samples each
    done[0].text, done[0].tokens, done[0].truncated

`prompts` are already-templated strings (or token-id lists). The loop drives the model's own forward (any
causal LM of transformers, with or without a PEFT adapter); what it does differently from `model.generate`, each
measured by benchmarks/decode.py:

- **Prompts sorted by length, then batched**, so a batch holds prompts of similar length (little left padding).
- **A KV cache filled in place** (`GrowingCache`): allocated once per batch for the longest possible sequence,
  written at each step, read up to the filled length. transformers' DynamicCache concatenates, which copies the
  whole cache at every step; its StaticCache attends over the whole allocated length.
- **Finished rows leave the batch**: once a quarter of a batch has finished, the finished rows' cache rows are
  dropped (one copy), so a batch does not decode at full width until its longest answer ends.
- **Only the last position goes through the LM head** (`logits_to_keep=1`): the 49k-word head over a 300-token
  prompt is a third of a prefill otherwise.
- **Greedy or sampled in a few tensor ops**: repetition penalty, temperature, top-k and top-p in the order and
  with the semantics of transformers' logits processors, so a seeded run is reproducible.

Greedy outputs equal `model.generate`'s except where batching changes float rounding (a different batch changes
the matrix-multiply blocking): tests/test_decode.py checks token identity on the tiny model, and
benchmarks/decode.py counts the answers that differ on the real one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from medreason.errors import UserError

log = logging.getLogger(__name__)

# finished rows are dropped from a batch once this share of it has finished (one copy of the cache each time)
COMPACT_AT = 0.25


@dataclass(frozen=True)
class Decoding:
    """How to decode. greedy=True ignores temperature, top_k and top_p."""

    max_new_tokens: int = 256
    greedy: bool = True
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int | None = None
    repetition_penalty: float = 1.0
    samples: int = 1  # completions per prompt
    seed: int = 0

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise UserError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if self.samples < 1:
            raise UserError(f"samples must be at least 1, got {self.samples}")
        if not self.repetition_penalty > 0:
            raise UserError(f"repetition_penalty must be above 0 (1 is none), got {self.repetition_penalty}")
        if not self.greedy:
            if not self.temperature > 0:
                raise UserError(f"temperature must be positive (greedy decoding needs none), got {self.temperature}")
            if not 0 < self.top_p <= 1:
                raise UserError(f"top_p must be in (0, 1], got {self.top_p}")
            if self.top_k is not None and self.top_k < 1:
                raise UserError(f"top_k must be at least 1, got {self.top_k}")
        elif self.samples > 1:
            raise UserError("greedy decoding gives one answer per prompt: samples > 1 needs sampling (greedy=False)")

    def key(self) -> dict:
        """What decides the tokens (for caches): everything but the seed of greedy decoding."""
        out = {"max_new_tokens": self.max_new_tokens, "greedy": self.greedy}
        if self.repetition_penalty != 1.0:
            out["repetition_penalty"] = self.repetition_penalty
        if not self.greedy:
            out |= {"temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k, "seed": self.seed}
            out["samples"] = self.samples
        return out


@dataclass
class Completion:
    prompt: int  # index of the prompt it continues
    ids: list[int]  # the generated tokens, without the stop token
    text: str
    truncated: bool  # max_new_tokens ran out before a stop token
    stop: int | None = None  # the stop token that ended it
    extra: dict = field(default_factory=dict)

    @property
    def tokens(self) -> int:
        return len(self.ids)


def decode(
    model,
    tokenizer,
    prompts: Sequence[str] | Sequence[list[int]],
    decoding: Decoding | None = None,
    *,
    batch_size: int = 32,
    on_batch: Callable[[list[Completion]], None] | None = None,
    streamer=None,
    stop: set[int] | None = None,
) -> list[Completion]:
    """Continuations of `prompts`, `decoding.samples` per prompt, in the order of the prompts (the samples of a
    prompt together). The model decodes as it is (its adapter on or off, as the caller set it); nothing about
    the model, the tokenizer or torch's settings is changed. `on_batch` is called with each finished batch (for
    progress and incremental caching); `streamer` (a transformers streamer) sees the tokens of a single prompt;
    `stop`: the tokens that end an answer (default: the model's end-of-sequence tokens; an empty set never stops,
    as a benchmark of full-length decoding wants)."""
    import torch

    decoding = decoding or Decoding()
    if batch_size < 1:
        raise UserError(f"batch_size must be at least 1, got {batch_size}")
    rows = [list(p) if not isinstance(p, str) else tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    if any(len(r) == 0 for r in rows):
        raise UserError("an empty prompt: every prompt needs at least one token")
    stop = stop_ids(model, tokenizer) if stop is None else set(stop)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    jobs = [(i, s) for i in range(len(rows)) for s in range(decoding.samples)]
    jobs.sort(key=lambda job: (len(rows[job[0]]), job[0], job[1]))  # similar lengths together
    generator = None if decoding.greedy else torch.Generator().manual_seed(decoding.seed)
    results: dict[tuple[int, int], Completion] = {}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(jobs), batch_size):
                chunk = jobs[start : start + batch_size]
                outs = _decode_batch(model, [rows[i] for i, _ in chunk], decoding, pad, stop, generator, streamer)
                done = []
                for (i, s), (ids, stopped) in zip(chunk, outs):
                    text = tokenizer.decode(ids, skip_special_tokens=True).strip()
                    results[(i, s)] = Completion(i, ids, text, truncated=stopped is None, stop=stopped)
                    done.append(results[(i, s)])
                if on_batch is not None:
                    on_batch(done)
    finally:
        model.train(was_training)
    return [results[(i, s)] for i in range(len(rows)) for s in range(decoding.samples)]


def stop_ids(model, tokenizer) -> set[int]:
    """The tokens that end an answer: the generation config's end-of-sequence ids and the tokenizer's."""
    config = getattr(model, "generation_config", None)
    eos = getattr(config, "eos_token_id", None)
    ids = set(eos if isinstance(eos, (list, tuple)) else [eos] if eos is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    if not ids:
        raise UserError("the model and its tokenizer name no end-of-sequence token: answers could never end")
    return ids


# --------------------------------------------------------------------------------------------- one batch


def _decode_batch(model, rows, decoding: Decoding, pad: int, stop: set[int], generator, streamer):
    """[(generated ids without the stop token, the stop token or None)] per row."""
    import torch

    device = next(model.parameters()).device
    n, width = len(rows), max(len(r) for r in rows)
    cache = GrowingCache(model, capacity=width + decoding.max_new_tokens)
    logits, attention, positions = _prefill(model, rows, pad, cache, device)
    seen = None
    if decoding.repetition_penalty != 1.0:  # the tokens each row has seen, prompt included (as transformers does)
        seen = torch.zeros((n, _vocab_size(model)), dtype=torch.bool, device=device)
        for j, r in enumerate(rows):
            seen[j, torch.tensor(r, device=device)] = True
    stop_tensor = torch.tensor(sorted(stop), device=device, dtype=torch.long)
    if streamer is not None and n == 1:  # a transformers streamer takes the prompt first (and skips it if told to)
        streamer.put(torch.tensor([rows[0]]))
    live = torch.arange(n, device=device)  # original row of each batch slot
    next_pos = positions + 1
    out: list[list[int]] = [[] for _ in range(n)]
    ended: list[int | None] = [None] * n
    finished = torch.zeros(n, dtype=torch.bool, device=device)
    for step in range(decoding.max_new_tokens):
        token = _choose(logits.float(), decoding, seen, generator)
        is_stop = torch.isin(token, stop_tensor)
        for slot, (row, t, s) in enumerate(zip(live.tolist(), token.tolist(), is_stop.tolist())):
            if finished[slot]:
                continue
            if s:
                ended[row] = t
            else:
                out[row].append(t)
        if streamer is not None and n == 1 and not finished[0]:
            streamer.put(token.cpu())
        finished |= is_stop
        if bool(finished.all()) or step == decoding.max_new_tokens - 1:
            break
        if seen is not None:
            seen.scatter_(1, token[:, None], True)
        if finished.float().mean() >= COMPACT_AT:  # drop the finished rows, and their cache rows
            keep = (~finished).nonzero().squeeze(1)
            cache.batch_select_indices(keep)
            live, attention, next_pos, token = live[keep], attention[keep], next_pos[keep], token[keep]
            seen = seen[keep] if seen is not None else None
            finished = finished[keep]
        attention = torch.cat([attention, attention.new_ones((attention.shape[0], 1))], dim=1)
        logits = model(
            input_ids=token[:, None],
            attention_mask=attention,
            position_ids=next_pos[:, None],
            cache=cache,
            use_cache=True,
        ).logits[:, -1]
        next_pos = next_pos + 1
    if streamer is not None:
        streamer.end()
    return list(zip(out, ended))


# a prefix shared by every prompt of a batch is prefilled once when it is at least this long
SHARED_PREFIX_MIN = 8


def _prefill(model, rows, pad: int, cache, device):
    """Run the prompts through the model into `cache`: (the last position's logits, the attention mask, the last
    position of every row). Each distinct prompt is prefilled once (the samples of a prompt share it), and the
    prefix that all of them share (the system prompt and the chat template's opening) once for all: the cache
    rows are then repeated. A shared prefix leaves the padding between it and each row's own part, which the
    attention mask hides and the position ids skip."""
    import torch

    distinct = list(dict.fromkeys(tuple(r) for r in rows))
    which = {prompt: k for k, prompt in enumerate(distinct)}
    shared = _common_prefix(distinct) if len(rows) > 1 else 0
    shared = min(shared, min(len(d) for d in distinct) - 1)  # every row keeps one token of its own
    if shared < SHARED_PREFIX_MIN:
        shared = 0
    if shared:
        prefix = torch.tensor([distinct[0][:shared]], device=device)
        model(
            input_ids=prefix,
            attention_mask=torch.ones_like(prefix),
            position_ids=torch.arange(shared, device=device)[None],
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        cache.batch_repeat_interleave(len(distinct))
    tails = [d[shared:] for d in distinct]
    width = max(len(t) for t in tails)
    ids = torch.full((len(tails), width), pad, dtype=torch.long)
    own = torch.zeros((len(tails), width), dtype=torch.long)
    for j, t in enumerate(tails):
        ids[j, width - len(t) :] = torch.tensor(t)
        own[j, width - len(t) :] = 1
    attention = torch.cat([torch.ones((len(tails), shared), dtype=torch.long), own], dim=1).to(device)
    positions = (shared + own.cumsum(-1) - 1).clamp(min=0).to(device)
    logits = model(
        input_ids=ids.to(device),
        attention_mask=attention,
        position_ids=positions,
        cache=cache,
        use_cache=True,
        logits_to_keep=1,
    ).logits[:, -1]
    if len(distinct) < len(rows):  # the samples of a prompt: its cache row, repeated
        index = torch.tensor([which[tuple(r)] for r in rows], device=device)
        cache.batch_select_indices(index)
        logits, attention, positions = logits[index], attention[index], positions[index]
    return logits, attention, positions[:, -1]


def _common_prefix(prompts) -> int:
    first = prompts[0]
    n = min(len(p) for p in prompts)
    for i in range(n):
        if any(p[i] != first[i] for p in prompts[1:]):
            return i
    return n


def _choose(logits, decoding: Decoding, seen, generator):
    """The next token of every row, as transformers' logits processors would pick it (repetition penalty, then
    temperature, top-k and top-p, then the argmax or a draw)."""
    import torch

    if seen is not None:
        penalized = torch.where(logits < 0, logits * decoding.repetition_penalty, logits / decoding.repetition_penalty)
        logits = torch.where(seen, penalized, logits)
    if decoding.greedy:
        return logits.argmax(-1)
    logits = logits / decoding.temperature
    if decoding.top_k is not None and decoding.top_k < logits.shape[-1]:
        kth = torch.topk(logits, decoding.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if decoding.top_p < 1.0:
        ordered, order = torch.sort(logits, descending=False)
        cumulative = ordered.softmax(-1).cumsum(-1)
        drop = cumulative <= (1 - decoding.top_p)
        drop[:, -1] = False  # keep at least the most likely token
        logits = logits.masked_fill(drop.scatter(1, order, drop), float("-inf"))
    return torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(1)


def _vocab_size(model) -> int:
    return model.get_output_embeddings().weight.shape[0]


# --------------------------------------------------------------------------------------------- the cache


def GrowingCache(model, capacity: int):  # noqa: N802 (a factory that reads as the class it returns)
    """A transformers Cache whose layers are allocated once for `capacity` positions and written in place."""
    from transformers.cache_utils import Cache

    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    return Cache(layers=[_growing_layer_class()(capacity) for _ in range(config.num_hidden_layers)])


_LAYER_CLASS = None


def _growing_layer_class():
    """transformers' DynamicLayer (the cache of one attention layer, grown by `update`) with its storage allocated
    once: `keys`/`values` are views of the filled part of a buffer, so `update` writes the new positions instead of
    concatenating (which copies the whole cache at every step). Built on first use: importing this module does not
    import transformers."""
    global _LAYER_CLASS
    if _LAYER_CLASS is not None:
        return _LAYER_CLASS
    import torch
    from transformers.cache_utils import DynamicLayer

    class GrowingLayer(DynamicLayer):
        def __init__(self, capacity: int):
            super().__init__()
            self.capacity = capacity
            self.length = 0

        def lazy_initialization(self, key_states, value_states):
            b, h, _, d = key_states.shape
            self.device = key_states.device
            self._k = torch.empty((b, h, self.capacity, d), dtype=key_states.dtype, device=self.device)
            self._v = torch.empty(
                (b, h, self.capacity, value_states.shape[-1]), dtype=value_states.dtype, device=self.device
            )
            self.is_initialized = True

        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            n = key_states.shape[-2]
            if self.length + n > self.capacity:
                raise RuntimeError(f"GrowingLayer: {self.length + n} positions exceed the capacity {self.capacity}")
            self._k[:, :, self.length : self.length + n] = key_states
            self._v[:, :, self.length : self.length + n] = value_states
            self.length += n
            self.keys, self.values = self._k[:, :, : self.length], self._v[:, :, : self.length]
            return self.keys, self.values

        def get_seq_length(self) -> int:
            return self.length

        def batch_repeat_interleave(self, repeats: int):
            if self.is_initialized:
                self.batch_select_indices(
                    torch.arange(self._k.shape[0], device=self._k.device).repeat_interleave(repeats)
                )

        def batch_select_indices(self, indices):
            if self.is_initialized:  # copy the filled part only, into buffers of the same capacity
                k = self._k.new_empty((len(indices), *self._k.shape[1:]))
                v = self._v.new_empty((len(indices), *self._v.shape[1:]))
                k[:, :, : self.length] = self._k[indices, :, : self.length]
                v[:, :, : self.length] = self._v[indices, :, : self.length]
                self._k, self._v = k, v
                self.keys, self.values = self._k[:, :, : self.length], self._v[:, :, : self.length]

    _LAYER_CLASS = GrowingLayer
    return GrowingLayer
