"""Registry entries into ServerSpecs: the value formats of nginx-upsync-module, checked.

Pure functions: a registry's answer goes in, a Snapshot comes out, with every entry that could
not be used named and explained instead of silently defaulted.
"""

from dataclasses import dataclass, field
from typing import Any

import orjson

from upsync.config.model import MAX_WEIGHT, ServerSpec
from upsync.config.servers import ServerLineError, format_name, parse_server_params, split_address
from upsync.units import UnitError, parse_time

# nginx-upsync-module's defaults for a registry entry (not nginx's max_fails=1)
DEFAULT_WEIGHT = 1
DEFAULT_MAX_FAILS = 2
DEFAULT_FAIL_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class BadEntry:
    key: str
    reason: str
    name: str | None = None  # the server the entry is about, when its key was an address


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A complete server list as one registry answer gave it."""

    servers: tuple[ServerSpec, ...]
    index: str = ""  # registry index or revision the list reflects
    bad: tuple[BadEntry, ...] = field(default_factory=tuple)


def server_name(key: str) -> tuple[str, int]:
    """A registry key naming a server: "host:port" or "[v6]:port", port required."""
    try:
        host, port = split_address(key, default_port=0)
    except ServerLineError as exc:
        raise ValueError(str(exc)) from None
    if port == 0:
        raise ValueError("the key must be host:port")
    if not host or any(c in host for c in " /\t"):
        raise ValueError("the key must be host:port")
    return host, port


def _int_field(
    values: dict[str, Any], name: str, default: int, minimum: int, maximum: int = 2**31 - 1
) -> int:
    value = values.get(name, default)
    if isinstance(value, bool):
        value = int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    if not isinstance(value, int):
        raise ValueError(f'"{name}" must be a number, not {value!r}')
    if value < minimum:
        raise ValueError(f'"{name}" must be at least {minimum}, not {value}')
    if value > maximum:
        raise ValueError(f'"{name}" must be at most {maximum}, not {value}')
    return value


def _seconds_field(values: dict[str, Any], name: str, default: float) -> float:
    value = values.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f'"{name}" must be seconds, not {value!r}')
    if isinstance(value, str):
        try:
            return parse_time(value)
        except UnitError:
            raise ValueError(f'"{name}" must be seconds, not {value!r}') from None
    if value < 0:
        raise ValueError(f'"{name}" must not be negative')
    return float(value)


def spec_from_json(host: str, port: int, raw: bytes | str | None) -> ServerSpec:
    """The module's JSON value: every field optional, a missing one taking its default (not its
    previous value), unknown ones (the seed's "server") ignored; an empty value is all defaults."""
    values: dict[str, Any] = {}
    if raw is not None and raw.strip():
        try:
            parsed = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"the value is not JSON ({exc})") from None
        if not isinstance(parsed, dict):
            raise ValueError("the value must be a JSON object")
        values = parsed
    return spec_from_fields(host, port, values)


def spec_from_fields(host: str, port: int, values: dict[str, Any]) -> ServerSpec:
    """A server from its fields (weight, max_fails, fail_timeout, max_conns, down, backup),
    each checked, a missing one taking the module's default."""
    return ServerSpec(
        name=format_name(host, port),
        host=host,
        port=port,
        weight=_int_field(values, "weight", DEFAULT_WEIGHT, 1, MAX_WEIGHT),
        max_fails=_int_field(values, "max_fails", DEFAULT_MAX_FAILS, 0),
        fail_timeout=_seconds_field(values, "fail_timeout", DEFAULT_FAIL_TIMEOUT),
        max_conns=_int_field(values, "max_conns", 0, 0),
        down=bool(_int_field(values, "down", 0, 0)),
        backup=bool(_int_field(values, "backup", 0, 0)),
    )


def parse_entry(key: str, value: bytes | str | None) -> ServerSpec | BadEntry:
    try:
        host, port = server_name(key)
    except ValueError as exc:
        return BadEntry(key, str(exc))
    try:
        return spec_from_json(host, port, value)
    except ValueError as exc:
        return BadEntry(key, str(exc), format_name(host, port))


class EntryParser:
    """Parses key/value entries, remembering the results of the previous call: a registry that
    changes one entry among 10,000 costs one JSON parse, not 10,000."""

    def __init__(self) -> None:
        self._cache: dict[tuple[str, bytes | str | None], ServerSpec | BadEntry] = {}

    def snapshot(self, pairs: list[tuple[str, bytes | str | None]], index: str = "") -> Snapshot:
        previous = self._cache
        cache: dict[tuple[str, bytes | str | None], ServerSpec | BadEntry] = {}
        servers: list[ServerSpec] = []
        bad: list[BadEntry] = []
        seen: set[str] = set()
        for pair in pairs:
            result = previous.get(pair)
            if result is None:
                result = parse_entry(*pair)
            cache[pair] = result
            if isinstance(result, BadEntry):
                bad.append(result)
            elif result.name not in seen:
                seen.add(result.name)
                servers.append(result)
        self._cache = cache
        return Snapshot(tuple(servers), index, tuple(bad))


def snapshot_from_kv(pairs: list[tuple[str, bytes | str | None]], index: str = "") -> Snapshot:
    """Key/value registries (etcd v2, etcd v3, Consul KV): keys are host:port."""
    return EntryParser().snapshot(pairs, index)


def spec_from_tags(host: str, port: int, tags: list[str], down: bool = False) -> ServerSpec:
    """Consul services: tags `weight=N`, `max_fails=N`, `fail_timeout=10s`, `down`, `backup`;
    other tags are the service's own and are ignored."""
    values: dict[str, Any] = {"down": int(down)}
    for tag in tags:
        key, sep, value = tag.partition("=")
        if sep and key in ("weight", "max_fails", "fail_timeout", "max_conns"):
            values[key] = value
        elif not sep and tag in ("down", "backup"):
            values[tag] = 1
    return spec_from_fields(host, port, values)


def snapshot_from_server_lines(text: str, origin: str) -> Snapshot:
    """A dump file, or a file source: `server ADDRESS [params];` lines, `#` comments. A line
    that cannot be used is reported with its file and line; when it still names a server, that
    server keeps its last good attributes, as a bad registry value does."""
    servers: list[ServerSpec] = []
    bad: list[BadEntry] = []
    seen: set[str] = set()
    for number, raw_line in enumerate(text.splitlines(), start=1):
        line = raw_line.split("#", 1)[0].strip()
        if not line:
            continue
        key = f"{origin}:{number}"
        words = line.rstrip(";").split()
        named: str | None = None
        if len(words) >= 2 and words[0] == "server":
            try:
                named = format_name(*server_name(words[1]))
            except ValueError:
                named = None
        if not line.isprintable():
            # bytes that are not UTF-8 were read as surrogates (see read_server_lines)
            bad.append(BadEntry(key, "the line is not UTF-8 text", named))
            continue
        if not line.endswith(";"):
            bad.append(BadEntry(key, f'missing ";" in "{line}"', named))
            continue
        if len(words) < 2 or words[0] != "server":
            bad.append(BadEntry(key, f'expected "server ADDRESS [params];", got "{line}"'))
            continue
        try:
            host, port = server_name(words[1])
            # `server` lines take nginx's defaults, as they would in an included file
            spec = parse_server_params(format_name(host, port), words[2:])
        except (ValueError, ServerLineError) as exc:
            bad.append(BadEntry(key, str(exc), named))
            continue
        if spec.name not in seen:
            seen.add(spec.name)
            servers.append(spec)
    return Snapshot(tuple(servers), "", tuple(bad))


def read_server_lines(data: bytes, origin: str) -> Snapshot:
    """Server lines from a file's bytes: a byte that is not UTF-8 spoils its own line only."""
    return snapshot_from_server_lines(data.decode("utf-8", errors="surrogateescape"), origin)
