"""Verifiable rewards for numeric answers: extract the model's final answer, compare exactly.

What counts as correct (pinned by tests/agent_side/test_verifiers.py):

Extraction (after dropping any ``<think>…</think>`` reasoning, which is never graded):
1. ``\\boxed{…}`` or ``<answer>…</answer>`` (the last one) — its whole content must be one number.
2. else the last ``Answer:`` / ``answer is`` / ``answer:`` / ``####`` marker — the first number after it
   (so "The answer is 42 (6*7)" is 42).
3. else the last number anywhere in the text.

Numbers (text is NFKC-normalised first, so fullwidth digits count):
- an optional sign ``+``, ``-`` or the unicode minus ``−`` (U+2212); a sign glued to a preceding
  letter, digit or ``)`` is an operator, not a sign ("6-7" is 6 and 7, never -7);
- digits with optional comma thousands separators in groups of exactly three ("1,000" is 1000;
  "1,00" is 1 and 00; "1,2,3" is three numbers), an optional decimal part, an optional exponent;
- a trailing sentence period is punctuation ("42." is 42), leading zeros are ignored ("042" is 42),
  "-0" equals 0, "42.0" equals 42;
- whitespace splits numbers ("4 2" is 4 and 2, so its answer is 2), and number words
  ("forty-two") are not read.

Comparison is exact in decimal arithmetic (no float rounding) unless a tolerance is given.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from decimal import Decimal

_MINUS_SIGNS = {"\u2212": "-", "\u2012": "-", "\ufe63": "-", "\uff0d": "-"}
_THINK = re.compile(r"<think>.*?(?:</think>|$)", re.DOTALL | re.IGNORECASE)
_NUMBER = re.compile(
    r"(?<![A-Za-z0-9_)\].])"  # glued to a word, bracket or decimal point: an operator / not a number
    r"(?P<sign>[-+])?"
    r"(?P<body>\d+(?:,\d{3}(?!\d))*(?:\.\d+)?|\.\d+)"
    r"(?:[eE](?P<exp>[-+]?\d+))?"
    r"(?![\d])",
)
_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")
_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)
_MARKER = re.compile(r"(?:\banswer\s*(?:is\b|:|=)|####)", re.IGNORECASE)
FORMAT_LINE = re.compile(r"^\s*answer\s*:\s*(?P<num>\S+?)\s*\.?\s*$", re.IGNORECASE)


def normalize(text: str) -> str:
    """NFKC (fullwidth digits → ASCII) and every minus-like sign → ASCII '-'."""
    text = unicodedata.normalize("NFKC", text)
    return "".join(_MINUS_SIGNS.get(ch, ch) for ch in text)


def strip_thinking(text: str) -> str:
    return _THINK.sub("", text)


def _to_decimal(match: re.Match[str]) -> Decimal:
    sign = match.group("sign") or ""
    body = match.group("body").replace(",", "")
    exp = match.group("exp")
    return Decimal(f"{sign}{body}" + (f"e{exp}" if exp else ""))


def numbers(text: str) -> list[Decimal]:
    """Every number in `text`, in order (see the module docstring for what a number is)."""
    text = normalize(text)
    return [_to_decimal(m) for m in _NUMBER.finditer(text)]


def parse_number(text: str) -> Decimal | None:
    """`text` as exactly one number (surrounding spaces and one trailing period allowed), else None."""
    text = normalize(text).strip()
    text = text[:-1] if text.endswith(".") else text
    text = text.strip().lstrip("$").rstrip("%").strip()
    m = _NUMBER.fullmatch(text)
    if m is None:
        return None
    return _to_decimal(m)


def extract_answer(text: str | None) -> Decimal | None:
    """The model's final numeric answer in `text`, or None when there is none."""
    if not text:
        return None
    text = normalize(strip_thinking(text))
    tagged = _BOXED.findall(text) or _ANSWER_TAG.findall(text)
    if tagged:
        return parse_number(tagged[-1])
    markers = list(_MARKER.finditer(text))
    if markers:
        after = numbers(text[markers[-1].end() :])
        if after:
            return after[0]
    found = numbers(text)
    return found[-1] if found else None


@dataclass(frozen=True)
class Verdict:
    correct: bool
    extracted: Decimal | None
    well_formatted: bool


def has_answer_line(text: str | None) -> bool:
    """Whether the last non-empty line (thinking excluded) is exactly ``Answer: <number>``."""
    if not text:
        return False
    lines = [ln for ln in normalize(strip_thinking(text)).splitlines() if ln.strip()]
    if not lines:
        return False
    m = FORMAT_LINE.match(lines[-1])
    return m is not None and parse_number(m.group("num")) is not None


def check_number(text: str | None, target: str | int | float | Decimal, tol: float = 0.0) -> Verdict:
    """Grade `text` against the numeric `target` (exact unless `tol` > 0, then absolute tolerance)."""
    want = target if isinstance(target, Decimal) else parse_number(str(target))
    if want is None:
        raise ValueError(f"target {target!r} is not a number")
    got = extract_answer(text)
    if got is None:
        correct = False
    elif tol > 0:
        correct = abs(got - want) <= Decimal(str(tol))
    else:
        correct = got == want
    return Verdict(correct=correct, extracted=got, well_formatted=has_answer_line(text))
