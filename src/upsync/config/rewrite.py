"""The rewrite module's directives (`set`, `rewrite`, `break`, `return`, `if`) as steps run in
order at a server's or a location's rewrite phase, built from the parsed block."""

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from upsync.config.nodes import Node
from upsync.config.regex import IGNORECASE, Regex, RegexError, compile_regex
from upsync.config.variables import Template, VariableError, as_wire_text, compile_template

if TYPE_CHECKING:
    from upsync.config.model import LocationConfig

REWRITE_DIRECTIVES = frozenset({"set", "rewrite", "break", "if", "return"})
# accepted and without effect on answers: they only choose what is logged
REWRITE_LOGGING = frozenset({"rewrite_log", "uninitialized_variable_warn"})
RewriteFlag = Literal["", "last", "break", "redirect", "permanent"]


@dataclass(frozen=True, slots=True)
class SetVariable:
    name: str
    value: Template


@dataclass(frozen=True, slots=True)
class Rewrite:
    regex: Regex
    replacement: Template
    flag: RewriteFlag
    # the replacement is an absolute URL: a redirect whatever the flag (302 unless permanent)
    redirects: bool


@dataclass(frozen=True, slots=True)
class Stop:
    """`break`: the rest of this rewrite phase is skipped."""


@dataclass(frozen=True, slots=True)
class ReturnStep:
    code: int
    text: Template | None


@dataclass(frozen=True, slots=True)
class Condition:
    """if (...): `$var`; `$var = s`, `!=`; `~ re`, `~*`, `!~`, `!~*`; `-f -d -e -x` (and `!`)."""

    kind: Literal["value", "equal", "regex", "file"]
    subject: Template
    negate: bool = False
    text: str = ""  # what `=` compares with; the test letter for `file`
    regex: Regex | None = None


@dataclass(frozen=True, slots=True)
class IfBlock:
    condition: Condition
    steps: tuple["Step", ...]
    # in a location, an `if` with other directives (add_header, proxy_pass, ...) is a location
    # of its own, as nginx builds it: when the condition holds, the request is served by it
    location: "LocationConfig | None" = None


# builds the location an `if` block with other than rewrite directives stands for
IfLocationMaker = Callable[[Node], "LocationConfig"]


Step = SetVariable | Rewrite | Stop | ReturnStep | IfBlock


def template_of(node: Node, value: str, directive: str = "") -> Template:
    """A directive value's template; an unknown variable is an error naming the directive."""
    try:
        return compile_template(value)
    except VariableError as exc:
        raise node.error(f'{exc} in "{directive or node.name}" directive') from None


def regex_of(node: Node, pattern: str, flags: int = 0) -> Regex:
    try:
        return compile_regex(as_wire_text(pattern), flags)
    except RegexError as exc:
        raise node.error(f'invalid regular expression "{pattern}": {exc}') from None


def _condition(node: Node) -> Condition:
    args = node.args
    if not args:
        raise node.error('invalid condition in "if" directive')
    first = args[0]
    if first in ("-f", "!-f", "-d", "!-d", "-e", "!-e", "-x", "!-x"):
        if len(args) != 2:
            raise node.error(f'invalid condition "{" ".join(args)}" in "if" directive')
        return Condition("file", template_of(node, args[1]), first.startswith("!"), first[-1])
    if not first.startswith("$"):
        raise node.error(f'invalid condition "{first}" in "if" directive')
    subject = template_of(node, first)
    if len(args) == 1:
        return Condition("value", subject)
    if len(args) != 3:
        raise node.error(f'invalid condition "{" ".join(args)}" in "if" directive')
    operator, operand = args[1], args[2]
    if operator in ("=", "!="):
        return Condition("equal", subject, operator == "!=", as_wire_text(operand))
    if operator in ("~", "~*", "!~", "!~*"):
        flags = IGNORECASE if operator.endswith("*") else 0
        regex = regex_of(node, operand, flags)
        return Condition("regex", subject, operator.startswith("!"), regex=regex)
    raise node.error(f'unexpected "{operator}" in condition')


def parse_return(node: Node) -> ReturnStep:
    """return CODE [TEXT|URL] | URL."""
    args = node.args
    if len(args) > 2:
        raise node.error('invalid number of arguments in "return" directive')
    if not args[0].isdigit():
        if len(args) == 1 and args[0].startswith(("http://", "https://", "$scheme")):
            return ReturnStep(302, template_of(node, args[0]))
        raise node.error(f'invalid return code "{args[0]}"')
    code = int(args[0])
    if code > 999:
        raise node.error(f'invalid return code "{args[0]}"')
    return ReturnStep(code, template_of(node, args[1]) if len(args) == 2 else None)


def build_step(
    node: Node, in_if: bool = False, if_location: IfLocationMaker | None = None
) -> Step:
    name, args = node.name, node.args
    if name == "set":
        if len(args) != 2 or not args[0].startswith("$") or len(args[0]) < 2:
            raise node.error(f'invalid variable name "{args[0]}"')
        return SetVariable(args[0][1:], template_of(node, args[1]))
    if name == "rewrite":
        if len(args) not in (2, 3):
            raise node.error('invalid number of arguments in "rewrite" directive')
        flag = args[2] if len(args) == 3 else ""
        if flag not in ("", "last", "break", "redirect", "permanent"):
            raise node.error(f'invalid parameter "{flag}"')
        replacement = args[1]
        redirects = replacement.startswith(("http://", "https://", "$scheme"))
        return Rewrite(
            regex_of(node, args[0]),
            template_of(node, replacement),
            flag,  # type: ignore[arg-type]
            redirects or flag in ("redirect", "permanent"),
        )
    if name == "break":
        return Stop()
    if name == "return":
        return parse_return(node)
    if name == "if":
        if in_if:
            raise node.error('"if" directive is not allowed here')
        steps = []
        others = False
        for child in node.block or ():
            if child.name in REWRITE_LOGGING:
                continue
            if child.name not in REWRITE_DIRECTIVES:
                if if_location is None:
                    raise child.error(
                        f'"{child.name}" directive inside a server\'s "if" is not supported by '
                        "upsync (only set, rewrite, return and break are)"
                    )
                others = True
                continue
            steps.append(build_step(child, in_if=True))
        location = if_location(node) if others and if_location is not None else None
        return IfBlock(_condition(node), tuple(steps), location)
    raise node.error(f'"{name}" is not a rewrite directive')
