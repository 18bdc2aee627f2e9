"""`map SOURCE $name { ... }` (ngx_http_map_module): a variable whose value is chosen by matching
another value against strings, host name masks and regular expressions. Pure: built from the
parsed block, asked with the source's rendered value."""

import re
from dataclasses import dataclass

from upsync.config.nodes import Node, unescape
from upsync.config.regex import IGNORECASE, Regex, RegexMatch
from upsync.config.rewrite import regex_of, template_of
from upsync.config.variables import Template, as_wire_text, compile_template

_SPECIAL = frozenset({"default", "hostnames", "include", "volatile"})


@dataclass(frozen=True, slots=True)
class VariableMap:
    name: str
    source: Template
    default: Template
    exact: dict[str, Template]  # lower-cased: strings match ignoring case
    # with `hostnames`: "*.example.com" and ".example.com" as ".example.com" (the latter also
    # matching example.com itself, kept in `exact`), "mail.*" as "mail."; longest first
    head_masks: tuple[tuple[str, Template], ...]
    tail_masks: tuple[tuple[str, Template], ...]
    regexes: tuple[tuple[Regex, Template], ...]  # in the order written
    hostnames: bool

    def choose(self, value: str) -> tuple[Template, RegexMatch | None]:
        """The value template for a source value, nginx's order: exact string, longest
        leading mask, longest trailing mask, first matching regex, default; with the regex's
        match (its captures become $1... and named variables)."""
        if self.hostnames and value.endswith("."):
            value = value[:-1]
        lower = value.lower()
        found = self.exact.get(lower)
        if found is not None:
            return found, None  # '' too: `'' close;` is the WebSocket recipe's
        if value:
            for suffix, template in self.head_masks:
                if lower.endswith(suffix):
                    return template, None
            for prefix, template in self.tail_masks:
                if lower.startswith(prefix):
                    return template, None
            for pattern, template in self.regexes:
                match = pattern.search(value)
                if match is not None:
                    return template, match
        return self.default, None


def _value(node: Node, text: str) -> Template:
    return template_of(node, text, "map")


def build_map(node: Node) -> VariableMap:
    """Its values may use every variable the configuration declares (see
    variables.declaring): other maps, named captures."""
    if len(node.args) != 2 or not node.args[1].startswith("$"):
        raise node.error('invalid number of arguments in "map" directive')
    name = node.args[1][1:]
    source = _value(node, node.args[0])
    default: Template | None = None
    hostnames = False
    exact: dict[str, Template] = {}
    head: list[tuple[str, Template]] = []
    tail: list[tuple[str, Template]] = []
    regexes: list[tuple[Regex, Template]] = []
    for entry in node.block or ():
        key, args = entry.name, entry.args
        if key in ("hostnames", "volatile") and not args:
            # every map value is computed when asked (nothing is cached): volatile already
            hostnames = hostnames or key == "hostnames"
            continue
        if len(args) != 1:
            raise entry.error(f'invalid number of the map parameters "{key}"')
        value = _value(entry, args[0])
        if key == "default":
            if default is not None:
                raise entry.error(f'duplicate default map parameter "{args[0]}"')
            default = value
            continue
        if key.startswith("~"):
            flags = IGNORECASE if key.startswith("~*") else 0
            pattern = key[2:] if flags else key[1:]
            regexes.append((regex_of(entry, pattern, flags), value))
            continue
        key = unescape(key)
        if key.startswith("\\") and (key[1:] in _SPECIAL or key[1:2] == "~"):
            key = key[1:]  # "\default", "\~x": the literal string
        key = as_wire_text(key).lower()
        if hostnames and (key.startswith(("*.", ".")) or key.endswith(".*")):
            if key.startswith("."):
                exact.setdefault(key[1:], value)  # ".example.com" is example.com too
                head.append((key, value))
            elif key.startswith("*."):
                head.append((key[1:], value))
            else:
                tail.append((key[:-1], value))
            continue
        if key in exact:
            raise entry.error(f'duplicate map value "{key}"')
        exact[key] = value
    return VariableMap(
        name=name,
        source=source,
        default=default or compile_template(""),
        exact=exact,
        head_masks=tuple(sorted(head, key=lambda item: -len(item[0]))),
        tail_masks=tuple(sorted(tail, key=lambda item: -len(item[0]))),
        regexes=tuple(regexes),
        hostnames=hostnames,
    )


def map_names(nodes: tuple[Node, ...]) -> list[tuple[str, Node]]:
    """The variables the `map` blocks of an http block define, for templates anywhere in it
    (a map may be used before it is written)."""
    return [(n.args[1][1:], n) for n in nodes if n.name == "map" and len(n.args) == 2]


def named_groups(pattern: str) -> list[str]:
    """The named captures of a regex as nginx writes it: `(?<name>...)`, `(?P<name>...)`,
    `(?'name'...)`: each is a variable where the regex matched."""
    found = re.findall(r"\(\?P?<([A-Za-z_]\w*)>|\(\?'([A-Za-z_]\w*)'", pattern)
    return [angled or quoted for angled, quoted in found]


def _used(variable_map: VariableMap) -> set[str]:
    templates = [
        variable_map.source,
        variable_map.default,
        *variable_map.exact.values(),
        *(t for _, t in variable_map.head_masks),
        *(t for _, t in variable_map.tail_masks),
        *(t for _, t in variable_map.regexes),
    ]
    return {part for template in templates for part in template.parts[1::2]}


def find_cycle(maps: dict[str, VariableMap]) -> list[str] | None:
    """Maps that use each other in a loop (nginx finds it per request: "cycle while
    evaluating variable"); upsync refuses them at load time."""
    uses = {name: _used(variable_map) & maps.keys() for name, variable_map in maps.items()}
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> list[str] | None:
        if name in path:
            return [*path[path.index(name) :], name]
        if name in done:
            return None
        for used in sorted(uses[name]):
            cycle = visit(used, [*path, name])
            if cycle is not None:
                return cycle
        done.add(name)
        return None

    for name in maps:
        cycle = visit(name, [])
        if cycle is not None:
            return cycle
    return None
