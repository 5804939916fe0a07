"""The Runs filter: a small query language compiled to a predicate over RunRow.

    status=running and kind=train-expert
    loss in (ce, logit_adjust)
    best.val/balanced_acc > 0.4 or not tag:baseline
    name~resnet                      (~ : contains, case-insensitive)
    (status=failed or status=lost) and epoch >= 10
    resnet                           (a bare word: contains, in id, name or kind)

Fields: ``status kind name id backend epoch tags notes``, ``best.<metric>``
and ``final.<metric>`` (from MetricSummary), ``config.<field>`` or a bare
config field name (``loss``, ``arch``, ``seed``...). Operators: ``= != < <=
> >= ~ in``. ``and`` binds tighter than ``or``; ``not`` and parentheses work
as usual. Comparing with a number compares numerically; a field a run does
not have never matches (so ``best.x > 0`` skips runs that never logged x).
Fields that hold numbers (epoch, best./final., numeric config fields) refuse a
value that is not one, rather than compare it as text and match nothing.
``status`` and ``kind`` take a value that exists or any unambiguous beginning of
one (``kind=recompute`` is recompute-logits; ``kind=train-`` is an error naming
train-expert and train-gating): the rule is app.names, which ``moe-tui ls`` uses
too. A trailing "…", as a cut table cell shows a value, is ignored there and in
searches (``~`` and bare words).

Errors are :class:`QueryError` with one line saying what is wrong and where.
"""

from __future__ import annotations

import re
import types
from dataclasses import dataclass
from typing import Callable, Union, get_args, get_origin

from app.names import UnknownName, resolve, uncut
from app.tui.data import RunRow
from engine.core.config import JOBS

Predicate = Callable[[RunRow], bool]

RUN_FIELDS = ("status", "kind", "name", "id", "backend", "epoch", "tags", "notes")
OPS = ("!=", "<=", ">=", "=", "<", ">", "~")

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<lparen>\() | (?P<rparen>\)) | (?P<comma>,) |
        (?P<op>!=|<=|>=|==|=|<|>|~) |
        (?P<str>"[^"]*"|'[^']*') |
        (?P<word>[^\s()=!<>~,"']+)
    )""",
    re.X,
)


class QueryError(ValueError):
    """A malformed filter; the message is one line for the status bar."""


@dataclass(frozen=True)
class Token:
    kind: str  # lparen rparen comma op str word end
    text: str
    pos: int


def tokenize(text: str) -> list[Token]:
    tokens, pos = [], 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            at = len(text) - len(text[pos:].lstrip())
            if text[at] in "\"'":  # only an unclosed quote fails to match here
                raise QueryError(f"the quote {text[at]} at column {at + 1} is not closed; end the value with {text[at]}")
            raise QueryError(f"unexpected character {text[at]!r} at column {at + 1}")
        kind = m.lastgroup
        value = m.group(kind)
        start = m.start(kind)
        if kind == "str":
            value = value[1:-1]
        elif kind == "op" and value == "==":
            value = "="
        tokens.append(Token(kind, value, start))
        pos = m.end()
    tokens.append(Token("end", "", len(text)))
    return tokens


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _is_number_type(annotation) -> bool:
    """int, float, or either of them or None (``int | None``); not bool."""
    if get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        return len(args) == 1 and _is_number_type(args[0])
    return annotation in (int, float)


def _numeric_config_fields() -> frozenset[str]:
    """Config fields that hold a number in every job that has them (lr, seed, epochs...)."""
    numeric: dict[str, bool] = {}
    for model in JOBS.values():
        for name, info in model.model_fields.items():
            numeric[name] = numeric.get(name, True) and _is_number_type(info.annotation)
    return frozenset(name for name, yes in numeric.items() if yes)


NUMERIC_CONFIG = _numeric_config_fields()


def _is_numeric_field(name: str) -> bool:
    lname = name.lower()
    if lname == "epoch" or lname.startswith(("best.", "final.")):
        return True
    if lname in RUN_FIELDS:
        return False
    return (name[7:] if lname.startswith("config.") else name) in NUMERIC_CONFIG


def _check_number(field: str, op: str, literal: str, tok: Token) -> None:
    """``epoch >= ten`` compared the epoch as text with 'ten' and matched nothing, silently.
    ``none``/``null`` stay allowed with = and != : they test whether a run has the field."""
    if not _is_numeric_field(field) or _number(literal) is not None:
        return
    if op in ("=", "!=") and literal.lower() in ("none", "null"):
        return
    raise QueryError(f"'{literal}' at column {tok.pos + 1} is not a number; {field} holds numbers, "
                     f"so compare it with one")


def field_value(row: RunRow, name: str):
    """The value of a filter field for a run, or None when the run has none."""
    lname = name.lower()
    if lname == "id":
        return row.run_id
    if lname == "tags":
        return ",".join(row.tags)
    if lname in RUN_FIELDS:
        return getattr(row, lname)
    if lname.startswith("best."):
        return row.best.get(name[5:])
    if lname.startswith("final."):
        return row.final.get(name[6:])
    key = name[7:] if lname.startswith("config.") else name
    return row.config.get(key)


def _as_text(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, list):
        return ",".join(map(str, value))
    return str(value)


def _compare(value, op: str, literal: str) -> bool:
    if value is None:  # a run without the field: only "= none" holds (as SQL's NULL, "!= 3" does not)
        return op == "=" and literal.lower() in ("none", "null", "")
    if op == "~":
        return literal.lower() in _as_text(value).lower()
    num = _number(literal)
    if num is not None and isinstance(value, (int, float)) and not isinstance(value, bool):
        v = float(value)
        return {"=": v == num, "!=": v != num, "<": v < num, "<=": v <= num, ">": v > num, ">=": v >= num}[op]
    text, lit = _as_text(value).lower(), literal.lower()
    if op in ("=", "!="):
        return (text == lit) == (op == "=")
    return {"<": text < lit, "<=": text <= lit, ">": text > lit, ">=": text >= lit}[op]


def _resolve_known(field: str, literal: str, tok: Token) -> str:
    """The status or kind ``literal`` names (app.names has the rule, shared with the CLI);
    other fields' values as they are."""
    try:
        return resolve(field, literal, f"{field.lower()} '{literal}' at column {tok.pos + 1}")
    except UnknownName as e:
        raise QueryError(str(e)) from None


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.tokens = tokenize(text)
        self.i = 0

    def peek(self) -> Token:
        return self.tokens[self.i]

    def take(self) -> Token:
        tok = self.tokens[self.i]
        self.i += 1
        return tok

    def is_word(self, word: str) -> bool:
        tok = self.peek()
        return tok.kind == "word" and tok.text.lower() == word

    def where(self, tok: Token) -> str:
        return "at the end" if tok.kind == "end" else f"at column {tok.pos + 1}"

    def parse(self) -> Predicate:
        pred = self.parse_or()
        tok = self.peek()
        if tok.kind != "end":
            raise QueryError(f"unexpected {tok.text!r} {self.where(tok)}; join conditions with 'and' or 'or'")
        return pred

    def parse_or(self) -> Predicate:
        parts = [self.parse_and()]
        while self.is_word("or"):
            self.take()
            parts.append(self.parse_and())
        return parts[0] if len(parts) == 1 else (lambda row: any(p(row) for p in parts))

    def parse_and(self) -> Predicate:
        parts = [self.parse_not()]
        while self.is_word("and"):
            self.take()
            parts.append(self.parse_not())
        return parts[0] if len(parts) == 1 else (lambda row: all(p(row) for p in parts))

    def parse_not(self) -> Predicate:
        if self.is_word("not"):
            self.take()
            inner = self.parse_not()
            return lambda row: not inner(row)
        return self.parse_atom()

    def parse_atom(self) -> Predicate:
        tok = self.take()
        if tok.kind == "lparen":
            inner = self.parse_or()
            close = self.take()
            if close.kind != "rparen":
                raise QueryError(f"missing ')' {self.where(close)} to close the '(' at column {tok.pos + 1}")
            return inner
        if tok.kind == "end":
            before = self.tokens[self.i - 2] if self.i >= 2 else None
            if before is None:
                raise QueryError("the filter is empty; write a condition such as status=running")
            raise QueryError(f"the filter ends early: '{before.text}' at column {before.pos + 1} needs a condition "
                             f"after it, e.g. status=running")
        if tok.kind not in ("word", "str"):
            raise QueryError(f"expected a condition such as status=running, got {tok.text!r} {self.where(tok)}")
        if tok.kind == "word" and tok.text.lower() in ("and", "or"):
            raise QueryError(f"'{tok.text}' {self.where(tok)} needs a condition before it")
        if tok.kind == "word" and tok.text.lower().startswith("tag:"):
            tag = tok.text[4:].lower()
            if not tag:
                raise QueryError(f"'tag:' at column {tok.pos + 1} needs a tag name, e.g. tag:baseline")
            return lambda row: tag in row.tags
        nxt = self.peek()
        if nxt.kind == "op":
            self.take()
            value = self.take()
            if value.kind not in ("word", "str"):
                raise QueryError(f"'{tok.text} {nxt.text}' needs a value {self.where(value)}")
            name, op, literal = tok.text, nxt.text, value.text
            if op in ("=", "!="):
                literal = _resolve_known(name, literal, value)
            if op == "~":
                literal = uncut(literal)
            else:
                _check_number(name, op, literal, value)
            return lambda row: _compare(field_value(row, name), op, literal)
        if self.is_word("in"):
            self.take()
            items = self.parse_list(tok.text)
            name = tok.text
            values = []
            for item in items:
                values.append(_resolve_known(name, item.text, item))
                _check_number(name, "=", item.text, item)
            return lambda row: any(_compare(field_value(row, name), "=", v) for v in values)
        # A bare word: a search in id, name and kind.
        needle = uncut(tok.text).lower()
        return lambda row: needle in row.run_id.lower() or needle in row.name.lower() or needle in row.kind.lower()

    def parse_list(self, field: str) -> list[Token]:
        open_ = self.take()
        if open_.kind != "lparen":
            raise QueryError(f"'{field} in' needs a list in parentheses {self.where(open_)}, e.g. {field} in (a, b)")
        values = []
        while True:
            tok = self.take()
            if tok.kind == "end":
                break
            if tok.kind == "rparen" and not values:
                raise QueryError(f"'{field} in ()' at column {open_.pos + 1} is empty; list at least one value")
            if tok.kind not in ("word", "str"):
                raise QueryError(f"expected a value in the list of '{field} in' {self.where(tok)}")
            values.append(tok)
            sep = self.take()
            if sep.kind == "rparen":
                return values
            if sep.kind == "end":
                break
            if sep.kind != "comma":
                raise QueryError(f"expected ',' or ')' {self.where(sep)} in the list of '{field} in'")
        raise QueryError(f"the list of '{field} in' at column {open_.pos + 1} is not closed; end it with ')'")


def compile_query(text: str) -> Predicate:
    """A predicate over RunRow; an empty query matches every run."""
    if not text.strip():
        return lambda row: True
    return _Parser(text).parse()
