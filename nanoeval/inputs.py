"""Checks of command-line inputs that must fail before any model is loaded: one clear line (UserError) each.

`check_sampling_numbers` is what every sampling configuration (`nanoeval.engine.SamplingConfig`) calls on its float
knobs first: comparisons with NaN are always false, so range checks alone let `nan` through to the sampler.
"""

from __future__ import annotations

import math

from nanotrain.errors import UserError


def check_sampling_numbers(temperature: float, top_p: float, repetition_penalty: float) -> None:
    """UserError unless temperature, top-p and repetition penalty are finite numbers."""
    for flag, value in (("--temperature", temperature), ("--top-p", top_p),
                        ("--repetition-penalty", repetition_penalty)):
        if not math.isfinite(value):
            raise UserError(f"{flag} {value}: must be a finite number")


def check_text(text: str, flag: str) -> str:
    """`text` unchanged if it is valid Unicode; UserError naming `flag` for bytes that were not UTF-8 (Python
    keeps them as lone surrogates, which the tokenizer cannot take)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        bad = text[e.start]
        byte = f"byte 0x{ord(bad) - 0xDC00:02x}" if 0xDC80 <= ord(bad) <= 0xDCFF else f"U+{ord(bad):04X}"
        raise UserError(f"{flag}: not valid UTF-8 text ({byte} at character {e.start})") from None
    return text
