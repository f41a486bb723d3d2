"""Golden tests for the GRPO rewards: exact rewards for realistic completions, in both shapes TRL passes."""

import pytest

from medreason.rewards import completion_text, correctness_reward, format_reward

OPTIONS = {"A": "Aspirin", "B": "Metformin", "C": "Insulin glargine", "D": "Warfarin"}

FORMAT_CASES = [
    ("<think>\nFasting glucose is high; first line is metformin.\n</think>\n\nThe answer is B.", 1.0),
    ("<think>\nreasoning\n</think>\n\nB", 1.0),
    ("  <think>reasoning</think> (B) Metformin  ", 1.0),
    ("<think>\nStill thinking about the HbA1c and the kidneys and", 0.0),  # truncated: block left open
    ("<think>\nreasoning\n</think>\n\n", 0.0),  # closed, but no answer after it
    ("<think>\nreasoning\n</think>\n\n...", 0.0),  # punctuation is not an answer
    ("<think>\n</think>\n\nB", 0.0),  # an empty reasoning block
    ("The answer is B.", 0.0),  # no reasoning block at all
    ("reasoning first\n</think>\n\nB", 0.0),  # closed but never opened
    ("<think>a</think> b <think>c</think> B", 0.0),  # two blocks
    ("<think>a</think></think> B", 0.0),  # closed twice
    ("", 0.0),
]


@pytest.mark.parametrize("text,expected", FORMAT_CASES)
def test_format_reward_golden(text, expected):
    assert format_reward([text]) == [expected]
    # the conversational shape TRL uses for chat prompts gives the same reward
    assert format_reward([[{"role": "assistant", "content": text}]]) == [expected]


def test_completion_text_shapes():
    assert completion_text("plain") == "plain"
    assert completion_text([{"role": "assistant", "content": "a"}, {"role": "assistant", "content": "b"}]) == "ab"
    assert completion_text([{"role": "assistant", "content": None}]) == ""
    assert completion_text({"role": "assistant", "content": "x"}) == "x"


CORRECTNESS_CASES = [
    ("<think>\nType 2 diabetes, normal kidneys: metformin first.\n</think>\n\nThe answer is B.", "B", 1.0),
    ("<think>\nType 2 diabetes, normal kidneys: metformin first.\n</think>\n\nThe answer is B.", "C", 0.0),
    ("<think>\nBleeding risk...\n</think>\n\nAnswer: D", "D", 1.0),
    ("<think>\nmaybe A, maybe B\n</think>\n\nMetformin", "B", 1.0),  # the option's text, after the block
    ("<think>\nI think it is", "B", 0.0),  # nothing to extract
    ("I do not know.", "A", 0.0),
]


@pytest.mark.parametrize("text,key,expected", CORRECTNESS_CASES)
def test_correctness_reward_golden(text, key, expected):
    assert correctness_reward([text], answer=[key], options=[OPTIONS]) == [expected]
    assert correctness_reward([[{"role": "assistant", "content": text}]], answer=[key], options=[OPTIONS]) == [expected]


def test_correctness_uses_the_eval_extractor():
    """One definition of 'correct': the reward is 1.0 exactly when eval's extractor returns the key."""
    from medreason.mcq import extract_choice

    texts = [t for t, _, _ in CORRECTNESS_CASES]
    rewards = correctness_reward(texts, answer=["B"] * len(texts), options=[OPTIONS] * len(texts))
    assert rewards == [1.0 if extract_choice(t, OPTIONS) == "B" else 0.0 for t in texts]


def test_correctness_trl_call_shape():
    """How GRPOTrainer calls a reward: prompts, completion_ids and its own extras as keywords, columns repeated
    over the group, and options from an Arrow column padded with None for labels a question lacks."""
    group = ["<think>\nx\n</think>\n\nB", "<think>\nx\n</think>\n\nA", "<think>\nx", "<think>\nx\n</think>\n\nE"]
    padded = {**OPTIONS, "E": None}
    rewards = correctness_reward(
        prompts=[[{"role": "user", "content": "q"}]] * 4,
        completions=group,
        completion_ids=[[1]] * 4,
        answer=["B"] * 4,
        options=[padded] * 4,
        trainer_state=None,
        log_extra=None,
        log_metric=None,
    )
    assert rewards == [1.0, 0.0, 0.0, 0.0]  # "E" is not an option of this question: never correct
    assert format_reward(prompts=None, completions=group, completion_ids=None, answer=None) == [1.0, 1.0, 0.0, 1.0]


def test_correctness_length_mismatch():
    with pytest.raises(ValueError, match="one 'answer' and one 'options' per prompt"):
        correctness_reward(["B", "A"], answer=["B"], options=[OPTIONS])
