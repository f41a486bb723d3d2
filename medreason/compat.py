"""Where medreason meets its libraries' rough edges, in one place: warnings a user cannot act on.

    from medreason.compat import quiet_library_warnings
    with quiet_library_warnings():      # what `medreason <command>` runs inside
        ...

Warnings are for the person running a command to act on. The ones below come from inside the libraries, fire on
every run whatever the user does, and say nothing about the user's input; each is silenced by its exact message
(never by category or module alone), names the versions it was checked against, and says why it is safe to drop.
`catch_warnings` restores the caller's filters on exit, so a library user's own filters are left as they were.
Anything else still reaches the user.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass(frozen=True)
class Noise:
    category: type[Warning]
    message: str  # a regular expression matched at the start of the warning's text
    checked: str  # the library versions it was seen and checked with
    why: str


LIBRARY_NOISE = (
    Noise(FutureWarning, r"`is_gradient_checkpointing` is deprecated",
          "transformers 5.24.0, peft 0.21.2, trl 1.16.0",
          "PEFT (PeftModel.__init__) and TRL read transformers' deprecated alias whenever they wrap a model; "
          "medreason itself uses activation_checkpointing"),
    Noise(UserWarning, r"Could not find a config file in .* - will assume that the vocabulary was not modified",
          "peft 0.21.2",
          "PEFT's save_pretrained looks the base model's config up by its Hub id to see whether the embeddings "
          "were resized; offline it cannot. medreason's LoRA never resizes them and saves the tokenizer beside "
          "the adapter"),
    Noise(UserWarning, r"'pin_memory' argument is set as true but no accelerator is found",
          "torch 2.13.0, transformers 5.24.0",
          "transformers' Trainer asks for pinned memory by default; on a CPU torch ignores it and warns"),
)


@contextmanager
def quiet_library_warnings():
    """Within this block, the warnings of LIBRARY_NOISE are dropped; every other warning is shown as usual."""
    with warnings.catch_warnings():
        for noise in LIBRARY_NOISE:
            warnings.filterwarnings("ignore", message=noise.message, category=noise.category)
        yield
