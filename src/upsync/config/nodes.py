"""crossplane's parsed statements as small typed values, and the scoped settings nginx inherits."""

import re
from dataclasses import dataclass, field
from typing import Any

from upsync.errors import ConfigError


@dataclass(frozen=True, slots=True)
class Node:
    name: str
    args: tuple[str, ...]
    file: str
    line: int
    block: tuple["Node", ...] | None = None

    @property
    def where(self) -> tuple[str, int]:
        return (self.file, self.line)

    def error(self, message: str) -> ConfigError:
        return ConfigError(message, self.file, self.line)

    def invalid(self, value: str) -> ConfigError:
        return self.error(f'invalid value "{value}" in "{self.name}" directive')


_ESCAPE = re.compile(r"\\([\"'\\tnr])")
_ESCAPED = {'"': '"', "'": "'", "\\": "\\", "t": "\t", "n": "\n", "r": "\r"}


def unescape(value: str) -> str:
    """nginx turns \\t, \\r, \\n, \\\\ and escaped quotes into their characters; crossplane
    keeps them as written."""
    if "\\" not in value:
        return value
    return _ESCAPE.sub(lambda m: _ESCAPED[m.group(1)], value)


def nodes_from_crossplane(statements: list[dict[str, Any]], file: str) -> tuple[Node, ...]:
    out = []
    for stmt in statements:
        stmt_file = stmt.get("file", file)
        block = stmt.get("block")
        out.append(
            Node(
                name=stmt["directive"],
                args=tuple(unescape(arg) for arg in stmt.get("args", ())),
                file=stmt_file,
                line=stmt["line"],
                block=None if block is None else nodes_from_crossplane(block, stmt_file),
            )
        )
    return tuple(out)


# Directives that nginx keeps as one array per level: a level that sets any of them replaces the
# whole array inherited from the level above (allow and deny share one array).
ARRAY_GROUPS = {
    "proxy_set_header": "proxy_set_header",
    "proxy_redirect": "proxy_redirect",
    "add_header": "add_header",
    "add_trailer": "add_trailer",
    "error_page": "error_page",
    "proxy_cookie_domain": "proxy_cookie_domain",
    "proxy_cookie_path": "proxy_cookie_path",
    "proxy_cookie_flags": "proxy_cookie_flags",
    "proxy_hide_header": "proxy_hide_header",
    "proxy_pass_header": "proxy_pass_header",
    "allow": "access",
    "deny": "access",
}
_ARRAY_KEYS = frozenset(ARRAY_GROUPS.values())
REPEATABLE = frozenset({"access_log"})


@dataclass(frozen=True)
class Scope:
    """Inheritable settings of one level (http, server, location) merged over its parent's."""

    values: dict[str, tuple[Node, ...]] = field(default_factory=dict)

    def child(self, nodes: list[Node]) -> "Scope":
        own: dict[str, list[Node]] = {}
        for node in nodes:
            key = ARRAY_GROUPS.get(node.name, node.name)
            entries = own.setdefault(key, [])
            if entries and key not in _ARRAY_KEYS and key not in REPEATABLE:
                raise node.error(f'"{node.name}" directive is duplicate')
            entries.append(node)
        merged = dict(self.values)
        merged.update({key: tuple(value) for key, value in own.items()})
        return Scope(merged)

    def one(self, name: str) -> Node | None:
        nodes = self.values.get(name)
        return nodes[-1] if nodes else None

    def all(self, name: str) -> tuple[Node, ...]:
        return self.values.get(name, ())
