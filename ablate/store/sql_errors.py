"""``ablate query --sql``'s parse errors in plain words: where (line, column, the token there) and
what is wrong, never the parser's own class names.

sqlglot reports a missing operand as "Required keyword: 'expression' missing for <class
'sqlglot.expressions.core.Mul'>"; a researcher reads "'*' needs a value on its right". Plain
Python over the error dict sqlglot's ParseError carries (``description``, ``line``, ``col``,
``highlight``), so it is tested without sqlglot's internals.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

# sqlglot's expression classes a query's syntax errors name, by class name: the operator's text
_OPERATORS = {
    "Add": "+", "Sub": "-", "Mul": "*", "Div": "/", "IntDiv": "/", "Mod": "%", "DPipe": "||",
    "EQ": "=", "NEQ": "<>", "GT": ">", "GTE": ">=", "LT": "<", "LTE": "<=", "NullSafeEQ": "IS",
    "And": "AND", "Or": "OR", "Like": "LIKE", "ILike": "ILIKE", "Is": "IS", "Glob": "GLOB",
    "BitwiseAnd": "&", "BitwiseOr": "|", "BitwiseXor": "^", "Escape": "ESCAPE",
}  # fmt: skip
# clauses: what each needs after its keyword
_CLAUSES = {
    "Where": "WHERE needs a condition after it",
    "Having": "HAVING needs a condition after it",
    "Order": "ORDER BY needs a column or expression after it",
    "Group": "GROUP BY needs a column or expression after it",
    "Limit": "LIMIT needs a number after it",
    "Offset": "OFFSET needs a number after it",
    "Join": "JOIN needs a table after it",
    "From": "FROM needs a table after it",
    "Select": "SELECT needs a column or expression after it",
    "Alias": "AS needs a name after it",
    "Cast": "CAST needs a value and a type: CAST(x AS REAL)",
    "Between": "BETWEEN needs two values: x BETWEEN a AND b",
    "In": "IN needs a list of values: x IN (1, 2)",
    "Not": "NOT needs a condition after it",
    "Paren": "a '(' must hold an expression",
}
_REQUIRED = re.compile(r"Required keyword: '(\w+)' missing for <class '[\w.]*?(\w+)'>")
_CLASS = re.compile(r"<class '[\w.]*?(\w+)'>")


def _what(description: str) -> str:
    found = _REQUIRED.search(description)
    if found is not None:
        name = found.group(2)
        if name in _OPERATORS:
            side = "left" if found.group(1) == "this" else "right"
            return f"{_OPERATORS[name]!r} needs a value on its {side}"
        if name in _CLAUSES:
            return _CLAUSES[name]
        return f"an incomplete {name.upper()} expression: a value or name is missing"
    if description.startswith("Expecting "):
        return f"a {description.removeprefix('Expecting ').strip()!r} is missing here"
    if description.startswith("Invalid expression / Unexpected token"):
        return "this word or symbol is not expected here (a misspelt keyword, or a missing comma or operator?)"
    # any other wording, without class names
    return " ".join(_CLASS.sub(lambda m: m.group(1).upper(), description).split())


def parse_error_message(error: Mapping[str, Any]) -> str:
    """One line for a sqlglot parse error (one of ``ParseError.errors``)."""
    description = str(error.get("description") or "the SQL is not valid")
    token = str(error.get("highlight") or "").strip()
    line, col = error.get("line"), error.get("col")
    where = ""
    if line:
        # sqlglot's column is the token's last character; a reader looks for its first
        start = max(1, int(col) - len(token) + 1) if col and token and "\n" not in token else col
        where = f" at line {line}, column {start}" + (f" ({token!r})" if token else "")
    return f"cannot parse the SQL{where}: {_what(description)}"


def tokenize_error_message(message: str) -> str:
    """sqlglot's TokenError (an unclosed quote or comment, a character SQL has no use for)."""
    near = message.split("Error tokenizing", 1)[-1].strip()
    near = near[-40:] if near else ""
    return "cannot parse the SQL: an unclosed quote or comment, or a character SQL does not know" + (
        f", near {near}" if near else ""
    )
