"""GRPO's rollouts through medreason's decode loop: the completions GRPOTrainer scores are sampled by
medreason.decode, the loop evaluation and chat use, handed to TRL as its documented `rollout_func`.

    from medreason.rollouts import rollout_func
    GRPOTrainer(..., rollout_func=rollout_func(grpo_config))    # None where TRL's own generation is the better path

What it changes against TRL's own generation (`model.generate` on the left-padded batch): the group's completions
share one prefill of their prompt (and every prompt the system prompt's), the cache is filled in place, and
finished completions leave the batch (benchmarks/grpo_step.py measures both). The sampling is the recipe's
(temperature, top_p, top_k, repetition penalty, max_completion_length), seeded from the recipe's seed and the
step. `rollout_func` is experimental in TRL 1.16 (medreason.compat, "rollout_func"): on another TRL, under vLLM
or with several processes, TRL generates as it always does.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def rollout_func(cfg):
    """TRL's rollout function for a GRPO config, or None to keep TRL's own generation."""
    from medreason.compat import unverified, verified
    from medreason.decode import Decoding
    from medreason.distributed import world_size

    if cfg.use_vllm or world_size() > 1:
        return None
    if not verified("rollout_func"):
        unverified("rollout_func", "TRL generates the rollouts itself")
        return None
    calls = {"n": 0}

    def rollout(prompts: list, trainer) -> dict:
        from medreason.decode import decode

        tokenizer = trainer.processing_class
        texts = [
            tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) if isinstance(p, list) else p
            for p in prompts
        ]
        prompt_ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
        decoding = Decoding(
            max_new_tokens=cfg.max_completion_length,
            greedy=False,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            top_k=cfg.top_k or None,
            repetition_penalty=cfg.repetition_penalty,
            seed=cfg.seed + calls["n"],
        )
        calls["n"] += 1
        model = trainer.accelerator.unwrap_model(trainer.model)
        done = decode(model, tokenizer, prompt_ids, decoding, batch_size=len(prompt_ids))
        # TRL's own path keeps the end-of-sequence token in the completion (its mask covers it)
        completion_ids = [c.ids + ([c.stop] if c.stop is not None else []) for c in done]
        return {"prompt_ids": prompt_ids, "completion_ids": completion_ids, "logprobs": None}

    return rollout
