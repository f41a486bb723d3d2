"""Text normalisation, in one place: what "the same words" means for de-duplication, contamination checks,
answer extraction and the fact set's rules.

    from medreason.text import normalize
    normalize("Vitamin B1 (thiamine)!")   # "vitamin b1 thiamine"
"""

from __future__ import annotations

import functools
import re
import unicodedata


@functools.lru_cache(maxsize=65536)
def normalize(text: str) -> str:
    """Lower case after NFKC, words of ASCII letters and digits joined by single spaces (punctuation and markup
    dropped)."""
    text = unicodedata.normalize("NFKC", text).lower()
    return " ".join(re.findall(r"[a-z0-9]+", text))
