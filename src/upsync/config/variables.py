"""nginx variables in directive values ("$host", "${http_x}"): compiled once, rendered often."""

import re
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
    }
)
KNOWN_PREFIXES = ("http_", "arg_", "cookie_")

_VARIABLE = re.compile(r"\$(?:\{([A-Za-z0-9_]+)\}|([A-Za-z0-9_]+))")


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


def compile_template(value: str) -> Template:
    parts: list[str] = []
    pos = 0
    for match in _VARIABLE.finditer(value):
        name = match.group(1) or match.group(2)
        if name not in KNOWN_VARIABLES and not name.startswith(KNOWN_PREFIXES):
            raise VariableError(f'unknown "{name}" variable')
        parts.append(value[pos : match.start()])
        parts.append(name)
        pos = match.end()
    parts.append(value[pos:])
    return Template(tuple(parts))
