"""What counts as a correct numeric answer (the rules are in agent_side/verifiers.py)."""

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent_side.verifiers import check_number, extract_answer, has_answer_line, numbers, parse_number

CORRECT_FOR_42 = [
    "42",
    "42.",  # sentence period
    "The answer is 42",
    "The answer is 42.",
    "the answer is: 42",
    "042",  # leading zero
    "42.0",
    "+42",
    "Answer: 42",
    "Some work: 6 * 7 = 42\nAnswer: 42",
    "\\boxed{42}",
    "<answer> 42 </answer>",
    "#### 42",
    "The answer is 42 (because 6*7 = 42)",
    "The answer isn't 41, it's 42",  # "isn't" is not a marker
    "<think>maybe 41? Answer: 41</think>Answer: 42",  # thinking is never graded
    "４２",  # fullwidth digits
    "答案是42",
    "$42",
    "I computed 6 times 7, which gives 42",
]
WRONG_FOR_42 = [
    "4 2",  # whitespace splits numbers: the answer read is 2
    "42.5",
    "420",
    "forty-two",  # number words are not read
    "",
    "no idea",
    "Answer: 41",
    "The answer is 41, not 42",  # the first number after the marker counts
    "<think>42</think>I don't know",
    "\\boxed{42 or 43}",  # boxed content must be exactly one number
    "−42",
    "-42",
    "42\n\nAnswer: 24",
]


@pytest.mark.parametrize("text", CORRECT_FOR_42)
def test_correct_answers(text: str) -> None:
    assert check_number(text, 42).correct, (text, extract_answer(text))


@pytest.mark.parametrize("text", WRONG_FOR_42)
def test_wrong_answers(text: str) -> None:
    assert not check_number(text, 42).correct, (text, extract_answer(text))


@pytest.mark.parametrize(
    ("text", "target"),
    [
        ("−42", -42),  # unicode minus sign U+2212
        ("The answer is −42.", "-42"),
        ("－42", -42),  # fullwidth hyphen-minus
        ("-0", 0),  # negative zero equals zero
        ("0", "-0"),
        ("1,000", 1000),
        ("The total is 1,000,000.", 1_000_000),
        ("$1,234.50", "1234.5"),
        ("4.2e1", 42),
        ("x = (-3)", -3),
    ],
)
def test_signs_and_separators(text: str, target: object) -> None:
    assert check_number(text, target).correct, (text, extract_answer(text))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("6-7", [6, 7]),  # a minus glued to a digit is an operator
        ("1,00", [1, 0]),  # not a thousands group: two numbers
        ("1,0000", [1, 0]),
        ("1,2,3", [1, 2, 3]),
        ("a - 5", [5]),  # a sign must touch its digits
        ("x-5", [5]),
        ("3.14.15", [Decimal("3.14")]),
    ],
)
def test_number_splitting(text: str, expected: list) -> None:
    assert numbers(text) == [Decimal(x) for x in expected]


def test_answer_line_format() -> None:
    assert has_answer_line("Let me see.\nAnswer: 42")
    assert has_answer_line("Answer: -1,000.")
    assert not has_answer_line("Answer: 42 apples")
    assert not has_answer_line("Answer: 4 2")
    assert not has_answer_line("The answer is 42")
    assert not has_answer_line("Answer: 42\nHope that helps")


def test_tolerance_and_bad_target() -> None:
    assert check_number("3.1416", "3.14159", tol=1e-3).correct
    assert not check_number("3.15", "3.14159", tol=1e-3).correct
    with pytest.raises(ValueError):
        check_number("42", "forty-two")
    assert parse_number("42 apples") is None


@given(st.integers(min_value=-(10**12), max_value=10**12))
def test_any_integer_round_trips_in_every_spelling(value: int) -> None:
    assert check_number(str(value), value).correct
    assert check_number(f"The answer is {value:,}.", value).correct
    assert check_number(f"Answer: {value}".replace("-", "\u2212"), value).correct
    assert not check_number(f"Answer: {value + 1}", value).correct
