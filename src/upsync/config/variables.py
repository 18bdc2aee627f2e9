"""nginx variables in directive values ("$host", "${http_x}"): compiled once, rendered often."""

import contextlib
import re
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Protocol

KNOWN_VARIABLES = frozenset(
    {
        "host",
        "remote_addr",
        "remote_port",
        "binary_remote_addr",
        "proxy_add_x_forwarded_for",
        "scheme",
        "request_uri",
        "uri",
        "document_uri",
        "args",
        "query_string",
        "is_args",
        "request_method",
        "server_name",
        "server_port",
        "server_addr",
        "server_protocol",
        "proxy_host",
        "proxy_port",
        "content_length",
        "content_type",
        "http_host",
        "upstream_addr",
        "status",
        "request",
        "time_local",
        "msec",
        "remote_user",
        "body_bytes_sent",
        "bytes_sent",
        "request_time",
        "request_length",
        "upstream_status",
        "upstream_response_time",
        "connection",
        "connection_requests",
        "pid",
        "time_iso8601",
        "upstream_connect_time",
        "upstream_header_time",
        "upstream_response_length",
        "request_id",
        "pipe",
        "https",
        "upstream_bytes_received",
        "upstream_bytes_sent",
        "request_body",
        "request_body_file",
        "limit_rate",
        "connection_time",
    }
)
KNOWN_PREFIXES = (
    "http_",
    "arg_",
    "cookie_",
    "upstream_http_",
    "upstream_cookie_",
    "sent_http_",
    "sent_trailer_",
)
# variables nginx leaves "not found" rather than empty when there is nothing to give (a header
# the request lacks, a request that went to no upstream): an access log line shows them as "-"
_ABSENT_WHEN_EMPTY_PREFIXES = ("http_", "arg_", "cookie_", "sent_http_", "upstream_")
_ABSENT_WHEN_EMPTY = frozenset({"remote_user", "content_length", "content_type", "proxy_host"})


def _absent_when_empty(name: str) -> bool:
    return name in _ABSENT_WHEN_EMPTY or name.startswith(_ABSENT_WHEN_EMPTY_PREFIXES)

_VARIABLE = re.compile(r"\$(?:\{([A-Za-z0-9_]+)\}|([A-Za-z0-9_]+))")


def as_wire_text(value: str) -> str:
    """Text from the config as the bytes nginx would hold: its UTF-8 encoding, one character
    per byte. Request data is kept the same way (bytes decoded as latin-1), so every value a
    template renders encodes back to the exact bytes, whatever a client or the config sent."""
    return value if value.isascii() else value.encode("utf-8").decode("latin-1")


def _log_escape_char(char: str) -> str:
    return f"\\x{ord(char):02X}"


_LOG_ESCAPES = {code: _log_escape_char(chr(code)) for code in (*range(0x20), *range(0x7F, 0x100))}
_LOG_ESCAPES[ord('"')] = '\\x22'
_LOG_ESCAPES[ord("\\")] = "\\x5C"


def log_escape(value: str) -> str:
    """nginx's default access log escaping: `"`, `\\`, control and non-ASCII bytes as \\xHH,
    so a request can never add a line or a field to the log."""
    if value.isascii() and value.isprintable() and '"' not in value and "\\" not in value:
        return value
    return value.translate(_LOG_ESCAPES)


class VariableSource(Protocol):
    def variable(self, name: str) -> str: ...


class VariableError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Template:
    """A directive value split into literal text and variable names (names at odd positions)."""

    parts: tuple[str, ...]

    @property
    def is_constant(self) -> bool:
        return len(self.parts) == 1

    @property
    def text(self) -> str:
        """The value when it has no variables."""
        return self.parts[0]

    def render(self, source: VariableSource) -> str:
        parts = self.parts
        if len(parts) == 1:
            return parts[0]
        out = []
        for index, part in enumerate(parts):
            out.append(source.variable(part) if index & 1 else part)
        return "".join(out)

    def render_for_log(self, source: VariableSource) -> str:
        """As render(), with each variable's value escaped for an access log line, and "-" for
        one nginx would find absent."""
        out = []
        for index, part in enumerate(self.parts):
            if index & 1:
                value = source.variable(part)
                out.append(log_escape(value) if value or not _absent_when_empty(part) else "-")
            else:
                out.append(part)
        return "".join(out)


# the variables the configuration being loaded defines beyond nginx's own (its maps, its
# regexes' named captures): templates anywhere in it may use them
_DECLARED: ContextVar[frozenset[str]] = ContextVar("declared variables", default=frozenset())


@contextlib.contextmanager
def declaring(names: frozenset[str]) -> Iterator[None]:
    token = _DECLARED.set(names)
    try:
        yield
    finally:
        _DECLARED.reset(token)


def is_known(name: str) -> bool:
    return (
        name in KNOWN_VARIABLES
        or name.startswith(KNOWN_PREFIXES)
        or name.isdigit()  # a regex's positional capture, $1..$9
        or name in _DECLARED.get()
    )


def compile_template(value: str) -> Template:
    parts: list[str] = []
    pos = 0
    for match in _VARIABLE.finditer(value):
        name = match.group(1) or match.group(2)
        if not is_known(name):
            raise VariableError(f'unknown "{name}" variable')
        parts.append(as_wire_text(value[pos : match.start()]))
        parts.append(name)
        pos = match.end()
    parts.append(as_wire_text(value[pos:]))
    return Template(tuple(parts))
