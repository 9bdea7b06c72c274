"""Reads terraform/*.tf and evaluates the attributes of its resources without Terraform.

python-hcl2 parses the files but leaves every expression as source text. This module
evaluates the small part of the Terraform language the pipeline's module uses: literals,
string templates, `local.`/`var.`/`path.module` references, indexing, `merge`,
`jsonencode`/`jsondecode`, `file`, `tostring`, `can`/`regex`, conditionals and comparisons. A reference
to another resource (`aws_sqs_queue.dead_letter.arn`) evaluates to a `Ref` naming it, so
a test can check what points where. Anything else raises `HclError` naming the expression:
a drift test that silently skipped what it cannot read would prove nothing.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import hcl2


class HclError(Exception):
    pass


@dataclass(frozen=True)
class Ref:
    """An attribute of another resource or data source, known only after apply."""

    path: str

    def attr(self, name: str) -> "Ref":
        return Ref(f"{self.path}.{name}")

    @property
    def resource(self) -> str:
        """`aws_sqs_queue.dead_letter` for `aws_sqs_queue.dead_letter.arn`."""
        parts = self.path.split(".")
        return ".".join(parts[:3] if parts[0] == "data" else parts[:2])


@dataclass(frozen=True)
class JsonDoc:
    """The argument of jsonencode(), kept as a value so references inside stay visible."""

    value: object


# --------------------------------------------------------------------------- tokens

_TOKEN = re.compile(
    r"""(?P<ws>\s+)|(?P<num>\d+(\.\d+)?)|(?P<ident>[A-Za-z_][A-Za-z0-9_-]*)|(?P<op>==|!=|<=|>=|&&|\|\||=>|[()\[\]{}.,?:=!<>+\-*/%])|(?P<str>")"""
)


def _tokens(src: str) -> list[tuple[str, object]]:
    out, i = [], 0
    while i < len(src):
        m = _TOKEN.match(src, i)
        if not m:
            raise HclError(f"cannot read {src[i:i + 30]!r} in {src!r}")
        kind = m.lastgroup
        if kind == "str":
            parts, i = _template(src, m.end())
            out.append(("str", parts))
            continue
        if kind == "num":
            out.append(("num", float(m.group()) if "." in m.group() else int(m.group())))
        elif kind != "ws":
            out.append((kind, m.group()))
        i = m.end()
    out.append(("end", None))
    return out


def _template(src: str, i: int) -> tuple[list, int]:
    """Reads a quoted string from after its opening quote: literal parts and ${} sources."""
    parts, buf = [], []
    while i < len(src):
        c = src[i]
        if c == '"':
            if buf:
                parts.append("".join(buf))
            return parts, i + 1
        if c == "\\":
            nxt = src[i + 1]
            buf.append({"n": "\n", "t": "\t", '"': '"', "\\": "\\"}.get(nxt, nxt))
            i += 2
            continue
        if src.startswith("${", i):
            if buf:
                parts.append("".join(buf))
                buf = []
            end = _matching_brace(src, i + 1)
            parts.append(("expr", src[i + 2 : end]))
            i = end + 1
            continue
        buf.append(c)
        i += 1
    raise HclError(f"unterminated string in {src!r}")


def _matching_brace(src: str, i: int) -> int:
    depth, in_str = 0, False
    while i < len(src):
        c = src[i]
        if in_str:
            if c == "\\":
                i += 1
            elif c == '"':
                in_str = False
        elif c == '"':
            in_str = True
        elif c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    raise HclError(f"unbalanced braces in {src!r}")


# --------------------------------------------------------------------------- parser


class _Parser:
    """Recursive descent over one expression; builds closures taking the evaluator."""

    def __init__(self, src: str):
        self.src = src
        self.toks = _tokens(src)
        self.i = 0

    def peek(self, value=None):
        kind, v = self.toks[self.i]
        return v == value if value is not None else (kind, v)

    def take(self, value=None):
        kind, v = self.toks[self.i]
        if value is not None and v != value:
            raise HclError(f"expected {value!r} at token {v!r} in {self.src!r}")
        self.i += 1
        return kind, v

    def parse(self):
        node = self.conditional()
        if self.toks[self.i][0] != "end":
            raise HclError(f"unexpected {self.toks[self.i][1]!r} in {self.src!r}")
        return node

    def conditional(self):
        cond = self.binary(0)
        if self.peek("?"):
            self.take("?")
            yes = self.conditional()
            self.take(":")
            no = self.conditional()
            return lambda ev: yes(ev) if _truth(cond(ev)) else no(ev)
        return cond

    _LEVELS = [("||",), ("&&",), ("==", "!="), ("<", ">", "<=", ">="), ("+", "-"), ("*", "/", "%")]

    def binary(self, level):
        if level == len(self._LEVELS):
            return self.unary()
        left = self.binary(level + 1)
        while self.toks[self.i][0] == "op" and self.toks[self.i][1] in self._LEVELS[level]:
            _, op = self.take()
            right = self.binary(level + 1)
            left = _binop(op, left, right)
        return left

    def unary(self):
        if self.peek("!"):
            self.take()
            inner = self.unary()
            return lambda ev: not _truth(inner(ev))
        if self.peek("-"):
            self.take()
            inner = self.unary()
            return lambda ev: -inner(ev)
        return self.postfix()

    def postfix(self):
        node = self.primary()
        while True:
            if self.peek("."):
                self.take()
                _, name = self.take()
                node = (lambda n, k: lambda ev: _get(n(ev), k))(node, name)
            elif self.peek("["):
                self.take()
                key = self.conditional()
                self.take("]")
                node = (lambda n, k: lambda ev: _get(n(ev), k(ev)))(node, key)
            else:
                return node

    def primary(self):
        kind, v = self.take()
        if kind == "num":
            return lambda ev: v
        if kind == "str":
            return self.template(v)
        if v == "(":
            inner = self.conditional()
            self.take(")")
            return inner
        if v == "[":
            return self.tuple_()
        if v == "{":
            return self.object_()
        if kind == "ident":
            if v in ("true", "false"):
                return lambda ev: v == "true"
            if v == "null":
                return lambda ev: None
            if self.peek("("):
                return self.call(v)
            return lambda ev: ev.root(v)
        raise HclError(f"unexpected {v!r} in {self.src!r}")

    def template(self, parts):
        compiled = [p if isinstance(p, str) else _Parser(p[1]).parse() for p in parts]

        def render(ev):
            values = [p if isinstance(p, str) else p(ev) for p in compiled]
            if len(values) == 1 and not isinstance(compiled[0], str):
                return values[0]
            if any(isinstance(x, Ref) for x in values):
                return Ref("".join(x.path if isinstance(x, Ref) else str(x) for x in values))
            return "".join(_to_string(x) for x in values)

        return render if compiled else (lambda ev: "")

    def tuple_(self):
        items = []
        while not self.peek("]"):
            items.append(self.conditional())
            if self.peek(","):
                self.take()
        self.take("]")
        return lambda ev: [x(ev) for x in items]

    def object_(self):
        items = []
        if self.peek("for"):
            raise HclError(f"for expressions are not supported: {self.src!r}")
        while not self.peek("}"):
            kind, key = self.take()
            if kind == "str":
                key = "".join(p for p in key if isinstance(p, str))
            elif kind != "ident":
                raise HclError(f"unsupported object key {key!r} in {self.src!r}")
            if not (self.peek("=") or self.peek(":")):
                raise HclError(f"expected = after {key!r} in {self.src!r}")
            self.take()
            items.append((key, self.conditional()))
            if self.peek(","):
                self.take()
        self.take("}")
        return lambda ev: {k: v(ev) for k, v in items}

    def call(self, name):
        self.take("(")
        args = []
        while not self.peek(")"):
            args.append(self.conditional())
            if self.peek(","):
                self.take()
        self.take(")")
        if name == "can":  # can(expr): whether expr evaluates without an error
            (inner,) = args

            def can(ev):
                try:
                    inner(ev)
                except (HclError, re.error):
                    return False
                return True

            return can
        if name not in _FUNCTIONS:
            raise HclError(f"function {name}() is not supported: {self.src!r}")
        fn = _FUNCTIONS[name]
        return lambda ev: fn(ev, *[a(ev) for a in args])


def _truth(v) -> bool:
    if isinstance(v, Ref):
        raise HclError(f"a condition depends on {v.path}, known only after apply")
    return bool(v)


def _binop(op, left, right):
    ops = {
        "==": lambda a, b: a == b,
        "!=": lambda a, b: a != b,
        "&&": lambda a, b: _truth(a) and _truth(b),
        "||": lambda a, b: _truth(a) or _truth(b),
        "<": lambda a, b: a < b,
        ">": lambda a, b: a > b,
        "<=": lambda a, b: a <= b,
        ">=": lambda a, b: a >= b,
        "+": lambda a, b: a + b,
        "-": lambda a, b: a - b,
        "*": lambda a, b: a * b,
        "/": lambda a, b: a / b,
        "%": lambda a, b: a % b,
    }
    f = ops[op]
    return lambda ev: f(left(ev), right(ev))


def _get(obj, key):
    if isinstance(obj, Ref):
        return obj.attr(str(key))
    try:
        return obj[key]
    except (KeyError, IndexError, TypeError) as e:
        raise HclError(f"no {key!r} in {obj!r}") from e


def _to_string(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def _merge(ev, *maps):
    out = {}
    for m in maps:
        if m is not None:
            out.update(m)
    return out


_FUNCTIONS = {
    "merge": _merge,
    "jsonencode": lambda ev, v: JsonDoc(v),
    "jsondecode": lambda ev, s: json.loads(s),
    "file": lambda ev, p: Path(p).read_text(),
    "tostring": lambda ev, v: _to_string(v),
    "filebase64sha256": lambda ev, p: Ref(f"filebase64sha256({p})"),
    "contains": lambda ev, xs, x: x in xs,
    "regex": lambda ev, pattern, text: _regex(pattern, text),
}


def _regex(pattern: str, text: str):
    """Terraform's regex(): the match, or an error when there is none (RE2 and Python
    agree on the simple patterns used here)."""
    m = re.search(pattern, text)
    if not m:
        raise HclError(f"regex {pattern!r} does not match {text!r}")
    return m.group(0)


# --------------------------------------------------------------------------- module


def _unquote(key: str) -> str:
    return key[1:-1] if key.startswith('"') and key.endswith('"') else key


def _source(value) -> str | None:
    """python-hcl2 wraps expressions as "${...}" and keeps string literals quoted."""
    if not isinstance(value, str):
        return None
    if value.startswith("${") and _matching_brace(value, 1) == len(value) - 1:
        return value[2:-1]
    return value


class Module:
    """A Terraform module read from a directory, with variables at their defaults."""

    def __init__(self, directory: Path, variables: dict | None = None):
        self.dir = Path(directory)
        self.blocks: dict[str, list] = {}
        for tf in sorted(self.dir.glob("*.tf")):
            with tf.open() as f:
                for kind, items in hcl2.load(f).items():
                    self.blocks.setdefault(kind, []).extend(items)
        self.variables = {}
        for block in self.blocks.get("variable", []):
            for name, body in block.items():
                self.variables[_unquote(name)] = body
        overrides = variables or {}
        self.var = {n: overrides.get(n, self.value(b.get("default"))) for n, b in self.variables.items()}
        self._local_src = {}
        for block in self.blocks.get("locals", []):
            self._local_src.update({k: v for k, v in block.items() if k != "__is_block__"})
        self._locals: dict = {}

    def resources(self, kind: str = "resource") -> dict[str, dict]:
        """`type.name` -> raw body (expressions unevaluated)."""
        out = {}
        for block in self.blocks.get(kind, []):
            for rtype, named in block.items():
                for name, body in named.items():
                    out[f"{_unquote(rtype)}.{_unquote(name)}"] = body
        return out

    def value(self, raw):
        """Evaluates a raw python-hcl2 value (expression source, literal, block or list)."""
        if isinstance(raw, dict):
            return {_unquote(k): self.value(v) for k, v in raw.items() if k != "__is_block__"}
        if isinstance(raw, list):
            return [self.value(v) for v in raw]
        src = _source(raw)
        if src is None:
            return raw
        return _Parser(src).parse()(self)

    def attribute(self, resource: str, path: str):
        """An evaluated attribute: `module.attribute("aws_sqs_queue.ingester", "name")`;
        nested blocks by dotted path (`environment.variables`)."""
        body = self.resources("data" if resource.startswith("data.") else "resource")[
            resource.removeprefix("data.")
        ]
        node = body
        for part in path.split("."):
            if isinstance(node, list):  # a block appears as a one-element list
                node = node[0]
            if part not in node:
                raise HclError(f"{resource} has no {path}")
            node = node[part]
        return self.value(node)

    # Evaluator interface used by compiled expressions.
    def root(self, name: str):
        if name == "local":
            return _Locals(self)
        if name == "var":
            return self.var
        if name == "path":
            return {"module": str(self.dir), "root": str(self.dir), "cwd": str(self.dir)}
        if name in ("each", "count", "self"):
            raise HclError(f"`{name}` is only known inside its block")
        return Ref(name)

    def local(self, name: str):
        if name not in self._locals:
            if name not in self._local_src:
                raise HclError(f"local.{name} is not defined")
            self._locals[name] = self.value(self._local_src[name])
        return self._locals[name]


class _Locals:
    def __init__(self, module: Module):
        self.module = module

    def __getitem__(self, name):
        return self.module.local(name)
