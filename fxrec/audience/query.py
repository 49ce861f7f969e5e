"""fxrec's targeting language: a Boolean query over a population's targetable fields.

    age in 18..24 and (interest:sports or interest:outdoor) and not country:US and surface = video

Grammar (keywords `and`, `or`, `not`, `in` in any case; `not` binds tighter than `and`, `and` tighter
than `or`; parentheses group)::

    query     := or_expr
    or_expr   := and_expr ("or" and_expr)*
    and_expr  := not_expr ("and" not_expr)*
    not_expr  := "not" not_expr | atom
    atom      := "(" or_expr ")"
               | NAME ":" value                      tag: country:US, interest:sports, dmp_a:sports
               | NAME OP value                       OP is = == != < <= > >=: age >= 25, surface = video
               | NAME "in" INT ".." INT              an inclusive range: age in 18..24
               | NAME "in" "{" value ("," value)* "}"  any of: country in {US, GB}
    value     := NAME | INT | "quoted text" | a keyword (country:IN is India)
    NAME      := a letter or _, then letters, digits, _ - /  (a keyword is never a name)

What a field means depends on the schema (fxrec.audience.schema.AudienceSchema):

- a categorical field (gender, country, region, device) takes values of its list: `=`, `!=`, tags, sets;
- a numeric field (age) takes integers: every operator, ranges, sets;
- a segment namespace (`interest`, or a data provider's name) takes segment names: the user is in it;
- `surface` selects the impressions on a surface: a user is reached when they have an impression on
  a surface the query accepts, and the query's impressions are those on such surfaces (so
  `not surface = feed` reaches users through stories and video, counting those impressions only).

Values match case-insensitively. A query that does not parse, or names a field or value the schema
lacks, raises `QueryError` pointing at the offending token (its column and a caret line).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from lark import Lark, Token, Tree
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

from fxrec.audience.schema import AudienceSchema
from fxrec.errors import InputError

GRAMMAR = r"""
?start: or_expr
?or_expr: and_expr (_OR and_expr)*
?and_expr: not_expr (_AND not_expr)*
?not_expr: _NOT not_expr -> negation
         | atom
?atom: "(" or_expr ")"
     | NAME ":" value -> tag
     | NAME OP value -> compare
     | NAME _IN INT ".." INT -> range
     | NAME _IN "{" value ("," value)* "}" -> members
value: NAME | INT | STRING | keyword
!keyword: _IN | _AND | _OR | _NOT

_OR: "or"i
_AND: "and"i
_NOT: "not"i
_IN: "in"i
OP: "==" | "!=" | "<=" | ">=" | "=" | "<" | ">"
NAME: /[A-Za-z_][A-Za-z0-9_\-\/]*/
INT: /[0-9]+/
STRING: /"[^"]*"/
%ignore /[ \t\r\n]+/
"""

_NAMES = {
    "_OR": "'or'", "_AND": "'and'", "_NOT": "'not'", "_IN": "'in'", "OP": "an operator (= != < <= > >=)",
    "NAME": "a name", "INT": "a number", "STRING": "a quoted value", "LPAR": "'('",
    "RPAR": "')'", "COLON": "':'", "LBRACE": "'{'", "RBRACE": "'}'", "COMMA": "','", "__ANON_0": "'..'",
    "$END": "the end of the query",
}  # fmt: skip


class QueryError(InputError):
    """A targeting query fxrec cannot use; `column` (1-based) is where the offending token starts."""

    def __init__(self, text: str, column: int, width: int, reason: str):
        caret = " " * (column - 1) + "^" * max(1, width)
        super().__init__(f"query error at column {column}: {reason}\n  {text}\n  {caret}")
        self.column, self.reason = column, reason


# The bound query: what fxrec evaluates.
@dataclass(frozen=True)
class Categorical:
    field: str
    codes: frozenset[int]


@dataclass(frozen=True)
class Numeric:
    field: str
    low: int
    high: int  # inclusive


@dataclass(frozen=True)
class Segment:
    namespace: str
    index: int


@dataclass(frozen=True)
class Surface:
    codes: frozenset[int]


@dataclass(frozen=True)
class Active:
    """The user has an impression on this surface (what a surface term becomes, per surface)."""

    surface: int


@dataclass(frozen=True)
class Const:
    value: bool


@dataclass(frozen=True)
class And:
    items: tuple


@dataclass(frozen=True)
class Or:
    items: tuple


@dataclass(frozen=True)
class Not:
    item: object


Node = Categorical | Numeric | Segment | Surface | Active | Const | And | Or | Not


@dataclass(frozen=True)
class Query:
    text: str
    node: Node

    @property
    def uses_surface(self) -> bool:
        return any(isinstance(leaf, Surface) for leaf in leaves(self.node))

    def per_surface(self, surfaces: int) -> list[Node]:
        """The query with its surface terms decided, one per surface (for that surface's impressions)."""
        return [
            substitute(self.node, lambda leaf, s=s: s in leaf.codes if isinstance(leaf, Surface) else None)
            for s in range(surfaces)
        ]

    def users(self, surfaces: int) -> Node:
        """Who is reached: a user with an impression on a surface the query accepts for them."""
        if not self.uses_surface:
            return self.node  # every user has an impression somewhere
        per = self.per_surface(surfaces)
        return simplify(Or(tuple(And((Active(s), node)) for s, node in enumerate(per))))


def leaves(node: Node) -> list[Node]:
    if isinstance(node, And | Or):
        return [leaf for item in node.items for leaf in leaves(item)]
    if isinstance(node, Not):
        return leaves(node.item)
    return [node]


def substitute(node: Node, decide) -> Node:
    """`node` with each leaf that `decide(leaf)` answers True/False replaced by that constant, simplified."""
    if isinstance(node, And | Or):
        return simplify(type(node)(tuple(substitute(item, decide) for item in node.items)))
    if isinstance(node, Not):
        return simplify(Not(substitute(node.item, decide)))
    if isinstance(node, Const):
        return node
    value = decide(node)
    return node if value is None else Const(bool(value))


def simplify(node: Node) -> Node:
    if isinstance(node, Not):
        return Const(not node.item.value) if isinstance(node.item, Const) else node
    if isinstance(node, And | Or):
        absorbing = isinstance(node, Or)  # True absorbs an or, False an and
        items = []
        for item in node.items:
            if isinstance(item, Const):
                if item.value == absorbing:
                    return Const(absorbing)
                continue
            items.append(item)
        if not items:
            return Const(not absorbing)
        return items[0] if len(items) == 1 else type(node)(tuple(items))
    return node


@lru_cache(maxsize=1)
def _parser() -> Lark:
    return Lark(GRAMMAR, parser="lalr", lexer="basic", propagate_positions=True, maybe_placeholders=False)


def _expected(names) -> str:
    shown = sorted({_NAMES.get(n, repr(n)) for n in names})
    return shown[0] if len(shown) == 1 else ", ".join(shown[:-1]) + " or " + shown[-1]


def parse(text: str, schema: AudienceSchema) -> Query:
    """Parse and bind `text` against `schema`; QueryError points at what is wrong."""
    if not text.strip():
        raise QueryError(text, 1, 1, "empty query; expected a condition such as country:US")
    try:
        tree = _parser().parse(text)
    except UnexpectedInput as error:
        raise _syntax_error(text, error) from None
    return Query(text, _Binder(text, schema).bind(tree))


def _syntax_error(text: str, error: UnexpectedInput) -> QueryError:
    if isinstance(error, UnexpectedCharacters):
        return QueryError(text, error.column, 1, f"unexpected character {text[error.pos_in_stream]!r}")
    if isinstance(error, UnexpectedToken) and error.token.type != "$END":
        token = error.token
        return QueryError(
            text, token.column, len(token), f"unexpected {str(token)!r}; expected {_expected(error.expected)}"
        )
    expected = _expected(error.expected) if isinstance(error, UnexpectedToken | UnexpectedEOF) else "more"
    return QueryError(text, len(text.rstrip()) + 1, 1, f"the query ends too early; expected {expected}")


class _Binder:
    def __init__(self, text: str, schema: AudienceSchema):
        self.text, self.schema = text, schema

    def fail(self, token: Token, reason: str) -> QueryError:
        return QueryError(self.text, token.column, len(str(token)), reason)

    def bind(self, tree: Tree | Token) -> Node:
        kind = tree.data
        if kind == "or_expr":
            return Or(tuple(self.bind(child) for child in tree.children))
        if kind == "and_expr":
            return And(tuple(self.bind(child) for child in tree.children))
        if kind == "negation":
            return Not(self.bind(tree.children[0]))
        field = tree.children[0]
        name = self.field(field)
        if kind == "tag":
            return self.equal(name, field, self.value(tree.children[1]))
        if kind == "compare":
            op, value = tree.children[1], self.value(tree.children[2])
            return self.compare(name, field, op, value)
        if kind == "range":
            low, high = tree.children[1], tree.children[2]
            if name not in self.schema.numeric:
                raise self.fail(
                    field, f"{name!r} is not numeric; a range needs a numeric field ({self.numeric_fields()})"
                )
            if int(low) > int(high):
                raise self.fail(low, f"empty range {low}..{high}; expected low <= high")
            return Numeric(name, int(low), int(high))
        if kind == "members":
            return Or(tuple(self.equal(name, field, self.value(v)) for v in tree.children[1:]))
        raise AssertionError(kind)

    def numeric_fields(self) -> str:
        return ", ".join(self.schema.numeric) or "the schema has none"

    def field(self, token: Token) -> str:
        name = str(token)
        if (
            name == "surface"
            or name in self.schema.categorical
            or name in self.schema.numeric
            or name in self.schema.segments
        ):
            return name
        known = ", ".join(self.schema.fields())
        raise self.fail(token, f"unknown field {name!r}; known fields: {known}")

    @staticmethod
    def value(tree: Tree) -> Token:
        token = tree.children[0]
        if isinstance(token, Tree):  # a keyword as a value: country:IN
            token = token.children[0]
            return Token("NAME", str(token), start_pos=token.start_pos, line=token.line, column=token.column)
        if token.type == "STRING":
            return Token(
                "NAME", str(token)[1:-1], start_pos=token.start_pos, line=token.line, column=token.column
            )
        return token

    def lookup(self, names: tuple[str, ...], token: Token, what: str) -> int:
        wanted = str(token).lower()
        for i, name in enumerate(names):
            if name.lower() == wanted:
                return i
        shown = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
        raise self.fail(token, f"unknown {what} {str(token)!r}; expected one of {shown}")

    def integer(self, token: Token, name: str) -> int:
        if token.type != "INT":
            raise self.fail(token, f"{name!r} takes whole numbers; got {str(token)!r}")
        return int(token)

    def equal(self, name: str, field: Token, value: Token) -> Node:
        if name == "surface":
            return Surface(frozenset({self.lookup(self.schema.surfaces, value, "surface")}))
        if name in self.schema.categorical:
            return Categorical(
                name, frozenset({self.lookup(self.schema.categorical[name], value, f"{name}")})
            )
        if name in self.schema.numeric:
            number = self.integer(value, name)
            return Numeric(name, number, number)
        return Segment(name, self.lookup(self.schema.segments[name], value, f"{name} segment"))

    def compare(self, name: str, field: Token, op: Token, value: Token) -> Node:
        if op in ("=", "=="):
            return self.equal(name, field, value)
        if op == "!=":
            return Not(self.equal(name, field, value))
        if name not in self.schema.numeric:
            raise self.fail(op, f"{str(op)!r} needs a numeric field; {name!r} takes = or !=")
        number = self.integer(value, name)
        low, high = {
            "<": (-(2**31), number - 1),
            "<=": (-(2**31), number),
            ">": (number + 1, 2**31),
            ">=": (number, 2**31),
        }[str(op)]
        return Numeric(name, low, high)
