"""medreason.decode, the one decode loop: its greedy answers are transformers' `generate`'s, token for token, through
everything it does differently (prompts sorted and batched, a shared prefix prefilled once, the cache filled in
place, finished rows leaving the batch); its sampling is seeded and reproducible. On the 2-layer random Llama of
conftest with the real SmolLM2 tokenizer and chat template."""

from __future__ import annotations

import pytest
import torch

from medreason.decode import Decoding, decode
from medreason.errors import UserError

QUESTIONS = [
    "What is anemia?",
    "A 30-year-old woman has fatigue and pallor. What is the most likely cause?",
    "Name the first-line drug for type 2 diabetes.",
    "Why does a tension pneumothorax shift the trachea?",
    "What does an S3 gallop suggest in an adult?",
    "Which vitamin deficiency causes scurvy? Explain briefly.",
    "Define sepsis.",
]


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_model_dir):
    """The tiny Llama's architecture with larger random weights: the saved one answers every prompt with line
    breaks, which would make token identity prove little; these answer each prompt with its own tokens, with
    wide gaps between the logits."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(tiny_model_dir)
    config.initializer_range = 0.3
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(tiny_model_dir)


def _prompts(tokenizer) -> list[str]:
    """Chat-templated prompts: they share the template's opening and the system prompt (a shared prefix)."""
    from medreason.config import DEFAULT_SYSTEM_PROMPT

    return [
        tokenizer.apply_chat_template(
            [{"role": "system", "content": DEFAULT_SYSTEM_PROMPT}, {"role": "user", "content": q}],
            tokenize=False,
            add_generation_prompt=True,
        )
        for q in QUESTIONS
    ]


def _reference(model, tokenizer, prompt: str, max_new_tokens: int, stop: set[int], **generation) -> list[int]:
    """transformers' greedy `generate` on the prompt alone, cut before the first stop token."""
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.inference_mode():
        out = model.generate(
            **ids,
            do_sample=False,
            max_new_tokens=max_new_tokens,
            temperature=None,
            top_p=None,
            top_k=None,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=sorted(stop),
            **generation,
        )
    new = out[0, ids["input_ids"].shape[1] :].tolist()
    end = next((i for i, t in enumerate(new) if t in stop), len(new))
    return new[:end]


def _stop_tokens(model, tokenizer, prompts) -> set[int]:
    """Tokens that some answers reach at different steps, made stop tokens: answers end at different lengths and
    finished rows leave their batch."""
    answers = [_reference(model, tokenizer, p, 16, stop=set()) for p in prompts]
    return {answers[0][5], answers[1][9], answers[3][2], answers[5][12]}


def test_greedy_equals_generate_token_for_token(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    prompts = _prompts(tokenizer)
    stop = _stop_tokens(model, tokenizer, prompts)
    expected = [_reference(model, tokenizer, p, 16, stop) for p in prompts]
    lengths = {len(e) for e in expected}
    assert len(lengths) > 2 and max(lengths) == 16  # rows end at different steps, some never: compaction happens
    for batch_size in (1, 3, 7):
        done = decode(model, tokenizer, prompts, Decoding(max_new_tokens=16), batch_size=batch_size, stop=stop)
        assert [c.ids for c in done] == expected, batch_size
        assert [c.truncated for c in done] == [len(e) == 16 for e in expected]
        assert all(c.stop in stop for c in done if not c.truncated)


def test_greedy_with_a_repetition_penalty_equals_generate(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    prompts = _prompts(tokenizer)[:4]
    expected = [_reference(model, tokenizer, p, 10, set(), repetition_penalty=1.3) for p in prompts]
    done = decode(model, tokenizer, prompts, Decoding(max_new_tokens=10, repetition_penalty=1.3), stop=set())
    assert [c.ids for c in done] == expected


def test_the_shared_prefix_is_prefilled_once(model_and_tokenizer, monkeypatch):
    """The prompts' common prefix (template + system prompt) goes through the model once, then every row's own
    part: fewer prompt tokens than a plain left-padded batch, and the same answers (checked above)."""
    model, tokenizer = model_and_tokenizer
    prompts = _prompts(tokenizer)[:3]
    widths = []
    original = model.forward

    def counting(*a, **k):
        widths.append(tuple(k["input_ids"].shape))
        return original(*a, **k)

    monkeypatch.setattr(model, "forward", counting)
    decode(model, tokenizer, prompts, Decoding(max_new_tokens=2), batch_size=3, stop=set())
    first, second = widths[0], widths[1]
    lengths = [len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts]
    assert first[0] == 1 and second[0] == 3  # the prefix once, then the three rows' own parts
    assert first[1] + second[1] == max(lengths)


def test_samples_share_their_prompt_and_a_seed_reproduces_them(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    prompts = _prompts(tokenizer)[:2]
    sampling = Decoding(max_new_tokens=8, greedy=False, temperature=1.0, samples=4, seed=3)
    one = decode(model, tokenizer, prompts, sampling, stop=set())
    two = decode(model, tokenizer, prompts, sampling, stop=set())
    assert [c.prompt for c in one] == [0, 0, 0, 0, 1, 1, 1, 1]
    assert [c.ids for c in one] == [c.ids for c in two]
    assert len({tuple(c.ids) for c in one[:4]}) > 1  # four different draws, not one answer four times
    other = decode(model, tokenizer, prompts, Decoding(**{**sampling.__dict__, "seed": 4}), stop=set())
    assert [c.ids for c in other] != [c.ids for c in one]


def test_top_k_one_is_greedy(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    prompts = _prompts(tokenizer)[:3]
    greedy = decode(model, tokenizer, prompts, Decoding(max_new_tokens=6), stop=set())
    sampled = decode(model, tokenizer, prompts, Decoding(max_new_tokens=6, greedy=False, top_k=1, seed=9), stop=set())
    assert [c.ids for c in sampled] == [c.ids for c in greedy]


def test_decoding_leaves_the_model_as_it_found_it(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    model.train()
    threads = torch.get_num_threads()
    decode(model, tokenizer, _prompts(tokenizer)[:2], Decoding(max_new_tokens=2), stop=set())
    assert model.training and torch.get_num_threads() == threads
    model.eval()


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"max_new_tokens": 0}, "max_new_tokens must be at least 1"),
        ({"samples": 2}, "greedy decoding gives one answer per prompt"),
        ({"greedy": False, "temperature": 0}, "temperature must be positive"),
        ({"greedy": False, "top_p": 1.5}, "top_p must be in"),
        ({"repetition_penalty": 0}, "repetition_penalty must be above 0"),
    ],
)
def test_bad_settings_are_one_line(settings, message):
    with pytest.raises(UserError, match=message):
        Decoding(**settings)
