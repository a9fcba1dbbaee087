"""A safe calculator: evaluates + − × ÷ // % ** and parentheses over numbers, nothing else."""

from __future__ import annotations

import ast
import operator
from fractions import Fraction

_BINOPS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}
MAX_LEN = 200
MAX_MAGNITUDE = 10**30


class CalcError(ValueError):
    pass


def _eval(node: ast.AST) -> Fraction:
    if isinstance(node, ast.Expression):
        return _eval(node.body)
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return Fraction(node.value)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_eval(node.operand))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        left, right = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Pow):
            if right.denominator != 1 or abs(right) > 64:
                raise CalcError("exponent must be an integer of at most 64")
        if isinstance(node.op, ast.Div | ast.FloorDiv | ast.Mod) and right == 0:
            raise CalcError("division by zero")
        value = _BINOPS[type(node.op)](left, right)
        value = Fraction(value)
        if abs(value) > MAX_MAGNITUDE:
            raise CalcError("result too large")
        return value
    raise CalcError(f"unsupported syntax: {type(node).__name__}")


def evaluate(expression: str) -> Fraction:
    """The exact value of an arithmetic expression; `CalcError` for anything else."""
    if not isinstance(expression, str) or not expression.strip():
        raise CalcError("empty expression")
    if len(expression) > MAX_LEN:
        raise CalcError(f"expression longer than {MAX_LEN} characters")
    text = expression.replace("×", "*").replace("÷", "/").replace("−", "-").replace("^", "**")
    text = text.replace(",", "")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        raise CalcError(f"syntax error: {exc.msg}") from None
    return _eval(tree)


def format_value(value: Fraction) -> str:
    """Integers as integers, everything else to 10 significant decimals."""
    if value.denominator == 1:
        return str(value.numerator)
    return f"{float(value):.10g}"
