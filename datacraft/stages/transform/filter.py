"""`filter`: keep rows where score expressions hold, e.g. `quality >= 3 and length.response > 20`.

Reads `scores.*` (names as written in the expression, dots allowed), and the row fields `task`,
`source`, `id`. Writes nothing; a row that fails condition i is dropped with reason = that
condition's text and a detail naming the row's values. A missing score fails the condition.

The expression language is a safe subset of Python: and / or / not, comparisons (chained too),
+ - * /, numbers, strings, `in [...]`, and names. It is parsed with `ast` and compiled to one
polars expression; nothing is `eval`-ed.
"""

from __future__ import annotations

import ast
import operator
from collections.abc import Callable
from typing import Any

import polars as pl
from pydantic import Field, field_validator

from datacraft.core.rows import SCORE_PREFIX, with_drop
from datacraft.core.stage import MapStage, StageParams, StageResult

ROW_FIELDS = ("task", "source", "id")


class FilterExpressionError(ValueError):
    pass


_CMP: dict[type, Callable[[Any, Any], Any]] = {
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
}
_BIN: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
}


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    raise FilterExpressionError(f"unsupported name syntax: {ast.dump(node)}")


def names_in(expression: str) -> list[str]:
    """Score / field names an expression reads (maximal dotted names, in order)."""
    tree = _parse(expression)
    inner = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    names = (
        _dotted(n) for n in ast.walk(tree) if isinstance(n, ast.Name | ast.Attribute) and id(n) not in inner
    )
    return list(dict.fromkeys(n for n in names if n not in ("True", "False")))


MAX_EXPRESSION_DEPTH = 60


def _parse(expression: str) -> ast.Expression:
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as err:
        raise FilterExpressionError(f"cannot parse filter {expression!r}: {err.msg}") from None
    except (RecursionError, MemoryError):
        tree = None
    if tree is None or _depth(tree) > MAX_EXPRESSION_DEPTH:
        raise FilterExpressionError(f"filter {expression[:60]!r}…: nested deeper than {MAX_EXPRESSION_DEPTH} levels")
    return tree


def _depth(tree: ast.AST) -> int:
    """Nesting depth of a parsed expression (iterative: the check must not recurse itself)."""
    deepest, stack = 0, [(tree, 1)]
    while stack:
        node, d = stack.pop()
        deepest = max(deepest, d)
        stack.extend((child, d + 1) for child in ast.iter_child_nodes(node))
    return deepest


def _compile(node: ast.AST) -> Any:
    if isinstance(node, ast.Expression):
        return _compile(node.body)
    if isinstance(node, ast.BoolOp):
        parts = [_compile(v) for v in node.values]
        out = parts[0]
        for p in parts[1:]:
            out = (out & p) if isinstance(node.op, ast.And) else (out | p)
        return out
    if isinstance(node, ast.UnaryOp):
        inner = _compile(node.operand)
        if isinstance(node.op, ast.Not):
            return ~inner
        if isinstance(node.op, ast.USub):
            return -inner
        raise FilterExpressionError(f"unsupported operator {type(node.op).__name__}")
    if isinstance(node, ast.Compare):
        left = _compile(node.left)
        out = None
        for op, comp in zip(node.ops, node.comparators, strict=True):
            if isinstance(op, ast.In | ast.NotIn):
                if not isinstance(comp, ast.List | ast.Tuple | ast.Set):
                    raise FilterExpressionError("`in` needs a literal list, e.g. task in ['a', 'b']")
                values = [_compile(e) for e in comp.elts]
                term = left.is_in(values)
                term = ~term if isinstance(op, ast.NotIn) else term
                right = None
            else:
                fn = _CMP.get(type(op))
                if fn is None:
                    raise FilterExpressionError(f"unsupported comparison {type(op).__name__}")
                right = _compile(comp)
                term = fn(left, right)
            out = term if out is None else (out & term)
            left = right if right is not None else left
        return out
    if isinstance(node, ast.BinOp):
        fn = _BIN.get(type(node.op))
        if fn is None:
            raise FilterExpressionError(f"unsupported operator {type(node.op).__name__}")
        return fn(_compile(node.left), _compile(node.right))
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float | str | bool):
        return node.value
    if isinstance(node, ast.Name | ast.Attribute):
        name = _dotted(node)
        if name in ("True", "False"):
            return name == "True"
        return pl.col(name) if name in ROW_FIELDS else pl.col(SCORE_PREFIX + name)
    raise FilterExpressionError(f"unsupported syntax in filter: {type(node).__name__}")


def compile_filter(expression: str) -> pl.Expr:
    """A filter expression → a boolean polars expression over a batch (nulls count as false)."""
    expr = _compile(_parse(expression))
    if not isinstance(expr, pl.Expr):
        raise FilterExpressionError(f"filter {expression!r} does not read any score or field")
    return expr.fill_null(False)


class FilterParams(StageParams):
    where: list[str] = Field(..., description="conditions; a row must satisfy all of them")

    @field_validator("where", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = [v]
        for cond in v:
            compile_filter(cond)  # syntax errors surface at config load
        return v


class FilterStage(MapStage[FilterParams, None]):
    """Keeps rows for which every `where` condition holds; drops the others with the failed condition."""

    name = "filter"
    Params = FilterParams

    def reads(self) -> set[str]:
        return {name if name in ROW_FIELDS else SCORE_PREFIX + name for cond in self.params.where for name in names_in(cond)}

    def process(self, batch: pl.DataFrame, resource: None = None) -> StageResult:
        p = self.params
        remaining = batch
        dropped = []
        for cond in p.where:
            cols = [c for c in names_in(cond) if c not in ROW_FIELDS]
            missing = [c for c in cols if SCORE_PREFIX + c not in remaining.columns]
            if missing:
                remaining = remaining.with_columns([pl.lit(None, dtype=pl.Float64).alias(SCORE_PREFIX + c) for c in missing])
            ok = remaining.select(compile_filter(cond).alias("_ok"))["_ok"]
            failed = remaining.filter(~ok)
            if failed.height:
                detail = pl.concat_str(
                    [pl.lit(f"{c}=") + pl.col(SCORE_PREFIX + c).cast(pl.Utf8).fill_null("missing") for c in cols] or [pl.lit("")],
                    separator=", ",
                )
                dropped.append(with_drop(failed, self.label, cond, detail))
            remaining = remaining.filter(ok)
        return StageResult(kept=remaining, dropped=pl.concat(dropped, how="diagonal_relaxed") if dropped else None)
