"""Choosing a server block by Host and a location by URI, with nginx's rules. Pure functions."""

from collections.abc import Sequence
from typing import Final
from urllib.parse import unquote_to_bytes

from upsync.config.model import LocationConfig, ServerBlock
from upsync.config.regex import IGNORECASE, Regex, RegexMatch, compile_regex

_FINAL, _PREFIX, _NONE = 0, 1, 2  # what one level's search found (ngx_http_core_find_location)


class LocationTable:
    """nginx's order: `=` exact; else the longest prefix, whose nested locations are searched
    the same way; unless that prefix is `^~` (or a nested search was final), the first matching
    regex in config order (then its nested locations); else the deepest prefix found."""

    def __init__(
        self, locations: Sequence[LocationConfig], fallback: LocationConfig | None = None
    ) -> None:
        self.exact = {loc.path: loc for loc in locations if loc.modifier == "="}
        self.prefixes = sorted(
            (
                loc
                for loc in locations
                if loc.modifier in ("", "^~") and not loc.path.startswith("@")
            ),
            key=lambda loc: len(loc.path),
            reverse=True,
        )
        self.regexes = [loc for loc in locations if loc.regex is not None]
        # "/app" when "location /app/ { proxy_pass ...; }" and no location is "/app" itself
        named = {loc.path for loc in locations if loc.regex is None}
        self.auto_redirects = {
            loc.path[:-1]: loc
            for loc in locations
            if loc.auto_redirect and loc.path[:-1] not in named
        }
        self.fallback = fallback
        self._cache: dict[str, LocationConfig] = {}
        self.nested = {
            id(loc): LocationTable(loc.locations) for loc in locations if loc.locations
        }

    def match(self, path: str) -> LocationConfig:
        """The location for a path; results are remembered (bounded), as matching is a pure
        function of the path."""
        location = self._cache.get(path)
        if location is None:
            location = self._match(path)
            if len(self._cache) < 4096:
                self._cache[path] = location
        return location

    def _match(self, path: str) -> LocationConfig:
        found, _ = self._search(path)
        if found is not None:
            return found
        assert self.fallback is not None
        return self.fallback

    def _search(self, path: str) -> tuple[LocationConfig | None, int]:
        exact = self.exact.get(path)
        if exact is not None:
            return exact, _FINAL
        if self.auto_redirects:
            auto = self.auto_redirects.get(path)
            if auto is not None:
                return auto, _FINAL  # answered with a redirect to its name, no regex tried
        found: LocationConfig | None = None
        state = _NONE
        no_regex = False
        for loc in self.prefixes:
            if path.startswith(loc.path):
                found, no_regex = loc, loc.modifier == "^~"
                nested = self.nested.get(id(loc))
                if nested is not None:
                    deeper, state = nested._search(path)
                    if deeper is not None:
                        found = deeper
                    if state == _FINAL:
                        return found, _FINAL
                    if state == _NONE:
                        state = _PREFIX
                else:
                    state = _PREFIX
                break
        if not no_regex:
            for loc in self.regexes:
                assert loc.regex is not None
                if loc.regex.search(path):
                    nested = self.nested.get(id(loc))
                    if nested is not None:
                        deeper, _ = nested._search(path)
                        if deeper is not None:
                            return deeper, _FINAL
                    return loc, _FINAL
        return found, state


def server_name_regex(written: str) -> Regex:
    """A `~regex` server name; nginx matches it ignoring case, as host names are."""
    return compile_regex(written[1:], IGNORECASE)


class VirtualServer:
    """A server block with its location table."""

    def __init__(self, block: ServerBlock) -> None:
        self.block = block
        self.locations = LocationTable(block.locations, block.fallback)
        # $server_name: the first name as written, without a ".example.com" form's dot (nginx)
        first = block.names[0] if block.names else ""
        self.name: str = first[1:] if first.startswith(".") else first
        self.name_regexes = [server_name_regex(n) for n in block.names if n.startswith("~")]

    def name_match(self, host: str) -> "RegexMatch | None":
        """The server name regex the host matched (its captures are variables)."""
        for pattern in self.name_regexes:
            match = pattern.search(host)
            if match is not None:
                return match
        return None


class ServerTable:
    """The server blocks that share one listening address, chosen by Host like nginx:
    exact name, longest `*.` wildcard, longest `.*` wildcard, first regex, then the default."""

    def __init__(self, blocks: Sequence[ServerBlock], port: int, host: str) -> None:
        servers = [VirtualServer(b) for b in blocks]
        self.default = servers[0]
        for server in servers:
            if any(
                lst.default_server and lst.port == port and lst.host == host
                for lst in server.block.listens
            ):
                self.default = server
                break
        self.exact: dict[str, VirtualServer] = {}
        self.head_wild: list[tuple[str, VirtualServer]] = []
        self.tail_wild: list[tuple[str, VirtualServer]] = []
        self.regexes: list[tuple[Regex, VirtualServer]] = []
        for server in servers:
            for written in server.block.names:
                if written.startswith("~"):
                    self.regexes.append((server_name_regex(written), server))
                    continue
                name = written.lower()
                if name.startswith("*."):
                    self.head_wild.append((name[1:], server))
                elif name.startswith("."):
                    self.exact.setdefault(name[1:], server)
                    self.head_wild.append((name, server))
                elif name.endswith(".*"):
                    self.tail_wild.append((name[:-1], server))
                else:
                    self.exact.setdefault(name, server)
        self.head_wild.sort(key=lambda item: len(item[0]), reverse=True)
        self.tail_wild.sort(key=lambda item: len(item[0]), reverse=True)
        self._cache: dict[str, VirtualServer] = {}

    def find(self, host: str) -> VirtualServer:
        server = self._cache.get(host)
        if server is None:
            server = self._find(host)
            if len(self._cache) < 1024:
                self._cache[host] = server
        return server

    def _find(self, host: str) -> VirtualServer:
        server = self.exact.get(host)
        if server is not None:
            return server
        for suffix, candidate in self.head_wild:
            if host.endswith(suffix):
                return candidate
        for prefix, candidate in self.tail_wild:
            if host.startswith(prefix):
                return candidate
        for pattern, candidate in self.regexes:
            if pattern.search(host):
                return candidate
        return self.default


_BAD_PERCENT = compile_regex("%(?![0-9A-Fa-f]{2})")


def normalize_path(raw_path: str) -> str | None:
    """nginx's $uri: percent-decoded, `//` merged, `.` and `..` resolved; None if it climbs
    above the root or is not a path (nginx answers 400). Like the raw path, the result holds
    one character per byte (latin-1): `/caf%C3%A9` stays the two UTF-8 bytes it names."""
    if not raw_path or raw_path[0] != "/":  # not startswith(): a method call costs more
        return None
    if "%" in raw_path:
        if _BAD_PERCENT.search(raw_path):
            return None  # "%" not followed by two hex digits: nginx's 400
        path = unquote_to_bytes(raw_path.encode("latin-1")).decode("latin-1")
    else:
        path = raw_path
    if "\x00" in path:
        return None
    if "//" not in path and "/." not in path:
        return path
    segments: list[str] = []
    parts = path.split("/")
    for part in parts[1:]:
        if part in ("", "."):
            continue
        if part == "..":
            if not segments:
                return None
            segments.pop()
            continue
        segments.append(part)
    trailing = path.endswith(("/", "/.", "/.."))
    result = "/" + "/".join(segments)
    if trailing and segments:
        result += "/"
    return result


# Host headers as sent, each with the host it names (valid ones only): new connections repeat
# them, and validating one costs about 2,000 instructions; bounded (cleared when full)
_KNOWN_HOSTS: Final[dict[bytes, str]] = {}
_KNOWN_HOSTS_LIMIT: Final = 1024


def header_host(value: bytes) -> str | None:
    """request_host() of a Host header as sent, remembered per process for valid names up
    to a name's length (so the memory stays small whatever clients send)."""
    host = _KNOWN_HOSTS.get(value)
    if host is None:
        host = request_host(value.decode("latin-1"))
        if host is not None and len(value) <= 255:
            if len(_KNOWN_HOSTS) >= _KNOWN_HOSTS_LIMIT:
                _KNOWN_HOSTS.clear()
            _KNOWN_HOSTS[value] = host
    return host


def request_host(value: str) -> str | None:
    """The host of a Host header or an absolute URI's authority as nginx takes it
    (ngx_http_validate_host): None when nginx answers 400 (empty, "..", a "/" or a control
    character anywhere); else lower case, without the port and one trailing dot."""
    value = value.strip(" \t")
    if (
        value.isascii()
        and value.isprintable()
        and " " not in value
        and "/" not in value
        and ".." not in value
        and not value.startswith("[")
    ):
        # the usual name or address: decided by a few calls instead of a look at each character
        host = value.partition(":")[0]
        if host.endswith("."):
            host = host[:-1]
        return host.lower() if host else None
    end = len(value)  # where the host ends: at the port's ":", or after an IPv6 literal's "]"
    dot = -2
    in_host, literal = True, value.startswith("[")
    for index, char in enumerate(value):
        if char == ".":
            if dot == index - 1:
                return None
            dot = index
        elif char == ":":
            if in_host and not literal:
                end, in_host = index, False
        elif char == "]":
            if literal and in_host:
                end, in_host = index + 1, False
        elif char == "/" or char <= " " or char == "\x7f":
            return None
    if dot == end - 1:
        end -= 1
    if end <= 0:
        return None
    return value[:end].lower()
