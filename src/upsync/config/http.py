"""`http { server { location { ... } } }` into ServerBlock and LocationConfig values."""

import dataclasses
import ipaddress
import os
from collections.abc import Callable
from typing import Literal

from upsync.config.directives import IGNORED
from upsync.config.expires import Expires, ExpiresError, parse_expires
from upsync.config.model import (
    COOKIE_FLAGS,
    AccessLog,
    AccessRule,
    ClientLimits,
    CookieFlags,
    ErrorPage,
    Handler,
    Listen,
    LocationConfig,
    ProxyPass,
    ProxySettings,
    Return,
    RewriteRule,
    ServerBlock,
    StaticFiles,
    UpstreamShow,
)
from upsync.config.nodes import Node, Scope
from upsync.config.regex import IGNORECASE, Regex, RegexError, compile_regex
from upsync.config.rewrite import (
    REWRITE_DIRECTIVES,
    REWRITE_LOGGING,
    IfLocationMaker,
    Step,
    build_step,
    parse_return,
    regex_of,
    template_of,
)
from upsync.config.servers import UNIX, ServerLineError, is_ip, split_address, unix_address
from upsync.config.variables import Template, as_wire_text
from upsync.units import UnitError, parse_size, parse_time

COMBINED_FORMAT = (
    '$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent '
    '"$http_referer" "$http_user_agent"'
)
NEXT_UPSTREAM_CONDITIONS = frozenset(
    {
        "error",
        "timeout",
        "invalid_header",
        "http_500",
        "http_502",
        "http_503",
        "http_504",
        "http_403",
        "http_404",
        "http_429",
        "non_idempotent",
        "off",
    }
)
# Settings a server or location inherits from the level above (nginx's merge semantics).
INHERITED = frozenset(
    {
        "proxy_set_header",
        "proxy_http_version",
        "proxy_connect_timeout",
        "proxy_send_timeout",
        "proxy_read_timeout",
        "proxy_next_upstream",
        "proxy_next_upstream_tries",
        "proxy_next_upstream_timeout",
        "proxy_buffering",
        "proxy_request_buffering",
        "proxy_buffer_size",
        "proxy_redirect",
        "proxy_hide_header",
        "proxy_pass_header",
        "proxy_method",
        "proxy_pass_request_headers",
        "proxy_pass_request_body",
        "proxy_set_body",
        "proxy_cookie_domain",
        "proxy_cookie_path",
        "proxy_cookie_flags",
        "proxy_bind",
        "proxy_limit_rate",
        "proxy_ignore_headers",
        "limit_rate",
        "limit_rate_after",
        "allow",
        "deny",
        "client_max_body_size",
        "client_body_buffer_size",
        "client_body_temp_path",
        "client_body_in_file_only",
        "keepalive_timeout",
        "keepalive_time",
        "keepalive_requests",
        "keepalive_disable",
        "access_log",
        "default_type",
        "root",
        "index",
        "types",
        "try_files",
        "server_tokens",
        "add_header",
        "add_trailer",
        "chunked_transfer_encoding",
        "error_page",
        "expires",
        "proxy_intercept_errors",
        "recursive_error_pages",
        "absolute_redirect",
        "port_in_redirect",
        "server_name_in_redirect",
        "client_header_timeout",
        "client_body_timeout",
        "send_timeout",
        "large_client_header_buffers",
        "ignore_invalid_headers",
        "underscores_in_headers",
        "lingering_close",
        "lingering_time",
        "lingering_timeout",
    }
)
# settings upsync reads per server (a connection's), though nginx also takes them per location
SERVER_LEVEL = frozenset({"lingering_close", "lingering_time", "lingering_timeout"})
REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})
DEFAULT_TYPES = {"html": "text/html", "gif": "image/gif", "jpg": "image/jpeg"}


_template = template_of


def _time(node: Node | None, default: float, index: int = 0) -> float:
    if node is None:
        return default
    try:
        return parse_time(node.args[index])
    except UnitError:
        raise node.invalid(node.args[index]) from None


def _size(node: Node | None, default: int, index: int = 0) -> int:
    if node is None:
        return default
    try:
        return parse_size(node.args[index])
    except UnitError:
        raise node.invalid(node.args[index]) from None


def _added_headers(nodes: tuple[Node, ...]) -> tuple[tuple[str, Template, bool], ...]:
    """add_header (add_trailer) NAME VALUE [always], from the level that sets any (as nginx
    inherits them)."""
    added = []
    for node in nodes:
        if len(node.args) == 3 and node.args[2] != "always":
            raise node.invalid(node.args[2])
        added.append((node.args[0], _template(node, node.args[1]), len(node.args) == 3))
    return tuple(added)


def _steps(nodes: list[Node], if_location: IfLocationMaker | None = None) -> tuple[Step, ...]:
    """The rewrite phase of a level; none when it has only `return`s (a location's `return`
    alone is its handler: the common case stays the plain one)."""
    if all(node.name == "return" for node in nodes):
        return ()
    return tuple(build_step(node, if_location=if_location) for node in nodes)


def _cookie_rules(nodes: tuple[Node, ...], domain: bool) -> tuple[RewriteRule, ...]:
    """proxy_cookie_domain|path off | FROM TO, as many as the level that sets any has; a
    domain regex ignores case whatever it is written with (as nginx)."""
    rules = []
    for node in nodes:
        if node.args == ("off",):
            if len(nodes) > 1:
                raise node.error(f'"off" cannot be combined with other "{node.name}" directives')
            return ()
        if len(node.args) != 2:
            raise node.error(f'invalid number of arguments in "{node.name}" directive')
        written, replacement = node.args
        regex = None
        match: Template | None = None
        if written.startswith("~"):
            caseless = domain or written.startswith("~*")
            pattern = written[2:] if written.startswith("~*") else written[1:]
            regex = regex_of(node, pattern, IGNORECASE if caseless else 0)
        else:
            match = _template(node, written)
        rules.append(RewriteRule(match, regex, _template(node, replacement)))
    return tuple(rules)


def _cookie_flags(nodes: tuple[Node, ...]) -> tuple[CookieFlags, ...]:
    """proxy_cookie_flags off | COOKIE [FLAG...], as many as the level that sets any has."""
    found = []
    for node in nodes:
        if node.args == ("off",):
            if len(nodes) > 1:
                raise node.error('"proxy_cookie_flags" directive is duplicate')
            return ()
        if len(node.args) < 2:
            raise node.error(f'invalid parameter "{node.args[0]}"')
        written, *flags = node.args
        for flag in flags:
            if "$" not in flag and flag.lower() not in COOKIE_FLAGS:
                raise node.error(f'invalid parameter "{flag}"')
        name = None if written.startswith("~") else _template(node, written)
        regex = regex_of(node, written[1:], IGNORECASE) if name is None else None
        found.append(CookieFlags(name, regex, tuple(_template(node, f) for f in flags)))
    return tuple(found)


IGNORABLE_HEADERS = frozenset(
    {
        "x-accel-redirect",
        "x-accel-expires",
        "x-accel-limit-rate",
        "x-accel-buffering",
        "x-accel-charset",
        "expires",
        "cache-control",
        "set-cookie",
        "vary",
    }
)


def _ignored_headers(node: Node | None) -> frozenset[str]:
    if node is None:
        return frozenset()
    names = frozenset(arg.lower() for arg in node.args)
    for arg in node.args:
        if arg.lower() not in IGNORABLE_HEADERS:
            raise node.invalid(arg)
    return names


def _bind(node: Node | None) -> Template | None:
    """proxy_bind ADDRESS [transparent] | off: a literal address is checked at load time."""
    if node is None or node.args[0] == "off":
        return None
    if len(node.args) == 2 and node.args[1] != "transparent":
        raise node.error(f'invalid parameter "{node.args[1]}"')
    template = _template(node, node.args[0])
    if template.is_constant:
        try:
            host, _ = split_address(node.args[0], default_port=0)
            if not is_ip(host):
                raise ServerLineError(f'invalid address "{node.args[0]}"')
        except ServerLineError as exc:
            raise node.error(f'{exc} in "proxy_bind" directive') from None
    return template


def _bind_transparent(node: Node | None) -> bool:
    return node is not None and len(node.args) == 2


def _error_pages(nodes: tuple[Node, ...]) -> tuple[ErrorPage, ...]:
    """error_page CODE... [=[RESPONSE]] URI, nginx's checks."""
    pages = []
    for node in nodes:
        if len(node.args) < 2:
            raise node.error('invalid number of arguments in "error_page" directive')
        *codes_written, target = node.args
        status: int | Literal["="] | None = None
        if codes_written[-1].startswith("="):
            answer = codes_written.pop()[1:]
            if not answer:
                status = "="
            elif answer.isdigit() and 100 <= int(answer) <= 999:
                status = int(answer)
            else:
                raise node.invalid(answer)
            if not codes_written:
                raise node.error('invalid number of arguments in "error_page" directive')
        codes = set()
        for written in codes_written:
            if not written.isdigit():
                raise node.invalid(written)
            code = int(written)
            if not 300 <= code <= 599 or code == 499:
                raise node.error(f'value "{written}" must be between 300 and 599')
            codes.add(code)
        pages.append(ErrorPage(frozenset(codes), _template(node, target), status))
    return tuple(pages)


def _redirects(nodes: tuple[Node, ...]) -> tuple[RewriteRule | None, ...] | None:
    """proxy_redirect default | off | FROM TO, as many as given at the level that sets any;
    FROM a prefix (with variables) or a `~`/`~*` regex, TO with variables and captures."""
    if not nodes:
        return None
    rules: list[RewriteRule | None] = []
    for node in nodes:
        if len(node.args) == 1:
            if node.args[0] == "off":
                if len(nodes) > 1:
                    raise node.error('"proxy_redirect off" cannot be combined with others')
                return ()
            if node.args[0] != "default":
                raise node.invalid(node.args[0])
            rules.append(None)
            continue
        written, replacement = node.args
        if written.startswith("~"):
            caseless = written.startswith("~*")
            pattern = written[2:] if caseless else written[1:]
            rules.append(
                RewriteRule(
                    None,
                    regex_of(node, pattern, IGNORECASE if caseless else 0),
                    _template(node, replacement),
                )
            )
        else:
            rules.append(RewriteRule(_template(node, written), None, _template(node, replacement)))
    return tuple(rules)


def _expires(node: Node | None) -> Expires | None:
    """expires [modified] TIME | @TIME | epoch | max | off; a value with variables is read per
    response. None: off."""
    if node is None:
        return None
    args = node.args
    modified = len(args) == 2
    if len(args) not in (1, 2) or (modified and args[0] != "modified"):
        raise node.error(f'invalid value "{args[0]}" in "expires" directive')
    template = _template(node, args[-1])
    if not template.is_constant:
        return Expires("modified" if modified else "access", 0, template)
    try:
        parsed = parse_expires(args[-1], modified)
    except ExpiresError as exc:
        if str(exc) == "invalid value":
            raise node.invalid(args[-1]) from None
        raise node.error(f'"expires" directive {exc}') from None
    return None if parsed.kind == "off" else parsed


def _server_tokens(node: Node | None) -> bool:
    if node is None or node.args[0] == "build":  # build: nginx's build name; upsync has one
        return True
    return _flag(node, True)


def _flag(node: Node | None, default: bool) -> bool:
    if node is None:
        return default
    value = node.args[0].lower()
    if value not in ("on", "off"):
        raise node.error(
            f'invalid value "{node.args[0]}" in "{node.name}" directive, it must be "on" or "off"'
        )
    return value == "on"


def _choice(node: Node | None, values: tuple[str, ...]) -> str:
    """One of the values a directive takes (the first is its default)."""
    if node is None:
        return values[0]
    value = node.args[0].lower()
    if value not in values:
        allowed = ", ".join(f'"{v}"' for v in values[:-1]) + f' or "{values[-1]}"'
        raise node.error(
            f'invalid value "{node.args[0]}" in "{node.name}" directive, it must be {allowed}'
        )
    return value


def _int(node: Node | None, default: int) -> int:
    if node is None:
        return default
    if not node.args[0].isdigit():
        raise node.invalid(node.args[0])
    return int(node.args[0])


class HttpBuilder:
    """Builds the server blocks of one `http` block; knows the upstream names for proxy_pass."""

    def __init__(
        self,
        upstream_names: set[str],
        log_formats: dict[str, Template],
        prefix: str,
        notice: Callable[[Node], None],
    ) -> None:
        self.upstream_names = upstream_names
        self.log_formats = log_formats
        self.prefix = prefix
        self.notice = notice
        self.implicit_upstreams: dict[str, Node] = {}
        self._built_types: dict[int, dict[str, str]] = {}

    def server(self, node: Node, http_scope: Scope) -> ServerBlock:
        inherited: list[Node] = []
        listens: list[Listen] = []
        names: list[str] = []
        locations: list[Node] = []
        server_return: Node | None = None
        rewrites: list[Node] = []
        for child in node.block or ():
            if child.name in REWRITE_DIRECTIVES:
                rewrites.append(child)
            if child.name in REWRITE_LOGGING:
                pass
            elif child.name in INHERITED:
                inherited.append(child)
            elif child.name == "listen":
                listens.extend(self._listen(child))
            elif child.name == "server_name":
                for name in child.args:
                    if name.startswith("~"):
                        try:
                            compile_regex(name[1:])
                        except RegexError as exc:
                            raise child.error(
                                f'invalid server name regex "{name}": {exc}'
                            ) from None
                names.extend(child.args)
            elif child.name == "location":
                locations.append(child)
            elif child.name == "return":
                server_return = child
            elif child.name in REWRITE_DIRECTIVES:
                pass
            elif child.name in IGNORED:
                self.notice(child)
            else:
                raise child.error(f'"{child.name}" directive is not supported in server by upsync')
        steps = _steps(rewrites)
        if steps:
            server_return = None  # one of the steps, in the order written
        scope = http_scope.child(inherited)
        named = {
            child.args[0]: self.location(child, scope)
            for child in locations
            if len(child.args) == 1 and child.args[0].startswith("@")
        }
        built = [
            self.location(child, scope)
            for child in locations
            if not (len(child.args) == 1 and child.args[0].startswith("@"))
        ]
        if server_return is not None:
            # A server-level `return` answers every request before any location is chosen: one
            # prefix "/" location covers every path (paths are normalised to start with "/").
            handler = Return(*self._return(server_return))
            built = [self._location_from(server_return, "", "/", None, handler, scope)]
        limits = ClientLimits(
            client_header_timeout=_time(scope.one("client_header_timeout"), 60.0),
            client_body_timeout=_time(scope.one("client_body_timeout"), 60.0),
            send_timeout=_time(scope.one("send_timeout"), 60.0),
            header_buffer_size=self._header_buffers(scope.one("large_client_header_buffers")),
            line_size=_size(scope.one("large_client_header_buffers"), 8192, index=1),
            ignore_invalid_headers=_flag(scope.one("ignore_invalid_headers"), True),
            underscores_in_headers=_flag(scope.one("underscores_in_headers"), False),
            lingering_close=_choice(scope.one("lingering_close"), ("on", "off", "always")),
            lingering_time=_time(scope.one("lingering_time"), 30.0),
            lingering_timeout=_time(scope.one("lingering_timeout"), 5.0),
        )
        return ServerBlock(
            listens=tuple(listens) or (Listen("", 80),),
            names=tuple(names) or ("",),
            locations=tuple(built),
            fallback=self._location_from(node, "", "", None, None, scope),
            limits=limits,
            where=node.where,
            named=named,
            rewrites=steps,
        )

    def _header_buffers(self, node: Node | None) -> int:
        if node is None:
            return 4 * 8192
        count = _int(node, 4)
        return count * _size(node, 8192, index=1)

    def _listen(self, node: Node) -> list[Listen]:
        """One address, or a port range ("127.0.0.1:8000-8009", nginx 1.27.3): one each."""
        address = node.args[0]
        host_part, colon, ports = address.rpartition(":")
        if not colon:
            host_part, ports = "", address
        first, dash, last = ports.partition("-")
        if dash and first.isdigit() and last.isdigit():
            if not 0 < int(first) <= int(last) < 65536:
                raise node.error(f'invalid port range in "{address}" of the "listen" directive')
            prefix = host_part + ":" if colon else ""
            return [
                self._listen_one(node, prefix + str(port))
                for port in range(int(first), int(last) + 1)
            ]
        return [self._listen_one(node, address)]

    def _listen_one(self, node: Node, address: str) -> Listen:
        default_server = False
        for param in node.args[1:]:
            if param in ("default_server", "default"):
                default_server = True
            elif param in ("ssl", "http2", "quic", "proxy_protocol"):
                raise node.error(f'"{param}" parameter of "listen" is not supported by upsync')
        if address.startswith(UNIX):
            try:
                return Listen(unix_address(address), 0, default_server)
            except ServerLineError as exc:
                raise node.error(f'{exc} in "listen" directive') from None
        if address.isdigit():
            host, port = "", int(address)
        else:
            try:
                host, port = split_address(address)
            except ServerLineError as exc:
                raise node.error(f'{exc} in "listen" directive') from None
            if host == "*":
                host = ""
        if not 0 < port < 65536:
            raise node.error(f'invalid port in "{address}" of the "listen" directive')
        return Listen(host, port, default_server)

    def location(
        self,
        node: Node,
        server_scope: Scope,
        parent_files: StaticFiles | None = None,
        if_handler: Handler = None,
        in_if: bool = False,
    ) -> LocationConfig:
        """A `location` block; also, given `if_handler` (the enclosing location's, None
        included), the location an `if` block in it stands for."""
        args = node.args
        if len(args) == 2:
            modifier, path = args
            if modifier not in ("=", "^~", "~", "~*"):
                raise node.error(f'invalid location modifier "{modifier}"')
        elif len(args) == 1:
            modifier, path = "", args[0]
            # nginx also accepts the modifier glued to the path: "location =/x".
            for glued in ("^~", "~*", "=", "~"):
                if path.startswith(glued) and len(path) > len(glued):
                    modifier, path = glued, path[len(glued) :]
                    break
        else:
            raise node.error('invalid number of arguments in "location" directive')
        path = as_wire_text(path)  # matched against the request's bytes
        regex = None
        if modifier in ("~", "~*"):
            try:
                regex = compile_regex(path, IGNORECASE if modifier == "~*" else 0)
            except RegexError as exc:
                raise node.error(f'invalid regular expression "{path}": {exc}') from None
        inherited: list[Node] = []
        handler_node: Node | None = None
        rewrites: list[Node] = []
        alias: Node | None = None
        nested: list[Node] = []
        limit_except: Node | None = None
        internal = False
        for child in node.block or ():
            if child.name == "internal":
                internal = True
                continue
            if child.name == "limit_except":
                if limit_except is not None:
                    raise child.error('"limit_except" directive is duplicate')
                limit_except = child
                continue
            if child.name == "alias":
                if alias is not None:
                    raise child.error('"alias" directive is duplicate')
                alias = child
                continue
            if child.name in REWRITE_DIRECTIVES:
                rewrites.append(child)
                if child.name != "return":
                    continue
            if child.name in REWRITE_LOGGING:
                continue
            if child.name in SERVER_LEVEL:
                # nginx takes these per location too; upsync applies them per connection
                raise child.error(
                    f'"{child.name}" directive is supported in http and server blocks only '
                    "by upsync"
                )
            if child.name in INHERITED:
                inherited.append(child)
            elif child.name in ("proxy_pass", "return", "upstream_show"):
                if handler_node is not None and child.name != "return":
                    raise child.error(f'"{child.name}" directive is duplicate')
                if handler_node is None or handler_node.name != "return":
                    handler_node = child
            elif child.name == "location":
                nested.append(child)
            elif child.name in IGNORED:
                self.notice(child)
            else:
                raise child.error(
                    f'"{child.name}" directive is not supported in location by upsync'
                )
        scope = server_scope.child(inherited)
        handler: Handler = None
        has_steps = not all(child.name == "return" for child in rewrites)
        if has_steps and handler_node is not None and handler_node.name == "return":
            handler_node = None  # the return is one of the steps, in the order written
        if handler_node is not None:
            handler = self._handler(handler_node, regex is not None or in_if)
        elif if_handler is not None:
            handler = if_handler  # an `if` without proxy_pass serves with its location's
        files: StaticFiles | None = None
        if alias is not None:
            if scope.one("root") is not None and any(n.name == "root" for n in inherited):
                raise alias.error(
                    '"alias" directive is duplicate, "root" directive was specified earlier'
                )
            if handler is not None:
                raise alias.error('"alias" with a handler other than files is not supported')
            handler = files = StaticFiles(
                self._path(alias.args[0], alias),
                True,
                self._index(scope),
                None if regex is not None else path,
            )
        elif (
            parent_files is not None
            and parent_files.alias
            and not any(child.name == "root" for child in node.block or ())
        ):
            files = dataclasses.replace(parent_files, index=self._index(scope))  # inherited
            if handler is None:
                handler = files

        def if_location(if_node: Node) -> LocationConfig:
            """nginx's location for an `if` with other directives: this one's settings, the
            block's own over them, and this one's handler unless it has proxy_pass."""
            own = tuple(
                child
                for child in if_node.block or ()
                if child.name not in REWRITE_DIRECTIVES and child.name not in REWRITE_LOGGING
            )
            synthetic = Node("location", node.args, if_node.file, if_node.line, own)
            return self.location(synthetic, scope, files or parent_files, handler, in_if=True)

        steps = _steps(rewrites, if_location) if has_steps else ()
        built = self._location_from(node, modifier, path, regex, handler, scope, steps, files)
        if limit_except is not None:
            built = dataclasses.replace(built, limit_except=self._limit_except(limit_except, scope))
        if internal:
            built = dataclasses.replace(built, internal=True)
        if modifier in ("", "^~") and len(path) > 1 and path.endswith("/"):
            built = dataclasses.replace(built, auto_redirect=isinstance(handler, ProxyPass))
        if nested:
            built = dataclasses.replace(
                built, locations=tuple(self._nested(child, built, scope) for child in nested)
            )
        return built

    def _nested(self, node: Node, parent: LocationConfig, scope: Scope) -> LocationConfig:
        """A location inside another, with nginx's checks: none in an exact or a named one,
        none named, and a prefix one within its prefix parent's prefix."""
        written = node.args[-1] if node.args else ""
        if parent.modifier == "=":
            raise node.error(
                f'location "{written}" cannot be inside the exact location "{parent.path}"'
            )
        if parent.path.startswith("@"):
            raise node.error(
                f'location "{written}" cannot be inside the named location "{parent.path}"'
            )
        if written.startswith("@"):
            raise node.error(f'named location "{written}" can be on the server level only')
        child = self.location(node, scope, parent.files)
        if child.regex is None and not child.path.startswith(parent.path):
            raise node.error(f'location "{child.path}" is outside location "{parent.path}"')
        return child

    def _path(self, value: str, node: Node | None = None) -> str:
        if "$" in value and node is not None:
            raise node.error(f'"{node.name}" with variables is not supported by upsync')
        return value if os.path.isabs(value) else os.path.join(self.prefix, value)

    def _index(self, scope: Scope) -> tuple[str, ...]:
        node = scope.one("index")
        return tuple(node.args) if node is not None else ("index.html",)

    def _types(self, node: Node | None) -> dict[str, str]:
        """A `types` block (`include mime.types`), built once however many levels share it;
        nginx's own three when none is given."""
        if node is None:
            return DEFAULT_TYPES
        built = self._built_types.get(id(node))
        if built is None:
            built = {}
            for entry in node.block or ():
                for extension in entry.args:
                    built[extension.lower()] = entry.name
            self._built_types[id(node)] = built
        return built

    def _location_from(
        self,
        node: Node,
        modifier: str,
        path: str,
        regex: Regex | None,
        handler: Handler,
        scope: Scope,
        rewrites: "tuple[Step, ...]" = (),
        files: StaticFiles | None = None,
    ) -> LocationConfig:
        keepalive = scope.one("keepalive_timeout")
        disabled = self._keepalive_disable(scope.one("keepalive_disable"))
        default_type = scope.one("default_type")
        if files is None:
            root = scope.one("root")
            directory = self._path(root.args[0], root) if root is not None else self._path("html")
            files = StaticFiles(directory, False, self._index(scope))
        if handler is None and not path.startswith("@"):
            handler = files
        # try_files is not inherited (nginx does not merge it): a location's own, or for the
        # server's fallback the server's
        try_node = scope.one("try_files")
        if try_node is not None and node.name == "location" and try_node not in (node.block or ()):
            try_node = None
        if try_node is not None and len(try_node.args) < 2:
            raise try_node.error('invalid number of arguments in "try_files" directive')
        return LocationConfig(
            modifier=modifier,
            path=path,
            regex=regex,
            handler=handler,
            proxy=self._proxy_settings(scope),
            access=self._access(scope),
            client_max_body_size=_size(scope.one("client_max_body_size"), 1024 * 1024),
            client_body_buffer_size=_size(scope.one("client_body_buffer_size"), 16 * 1024),
            client_body_temp_path=self._temp_path(scope.one("client_body_temp_path")),
            client_body_in_file_only=_choice(
                scope.one("client_body_in_file_only"), ("off", "on", "clean")
            ),
            keepalive_timeout=_time(keepalive, 75.0),
            keepalive_requests=_int(scope.one("keepalive_requests"), 1000),
            keepalive_header=(
                int(_time(keepalive, 0.0, index=1)) if keepalive and len(keepalive.args) > 1 else 0
            ),
            keepalive_disable_msie6="msie6" in disabled,
            keepalive_disable_safari="safari" in disabled,
            keepalive_time=_time(scope.one("keepalive_time"), 3600.0),
            default_type=default_type.args[0] if default_type else "text/plain",
            access_logs=self._access_logs(scope),
            where=node.where,
            server_tokens=_server_tokens(scope.one("server_tokens")),
            absolute_redirect=_flag(scope.one("absolute_redirect"), True),
            port_in_redirect=_flag(scope.one("port_in_redirect"), True),
            server_name_in_redirect=_flag(scope.one("server_name_in_redirect"), False),
            add_headers=_added_headers(scope.all("add_header")),
            add_trailers=_added_headers(scope.all("add_trailer")),
            chunked_transfer_encoding=_flag(scope.one("chunked_transfer_encoding"), True),
            error_pages=_error_pages(scope.all("error_page")),
            rewrites=rewrites,
            types=self._types(scope.one("types")),
            files=files,
            try_files=tuple(_template(try_node, a) for a in try_node.args) if try_node else (),
            expires=_expires(scope.one("expires")),
            intercept_errors=_flag(scope.one("proxy_intercept_errors"), False),
            recursive_error_pages=_flag(scope.one("recursive_error_pages"), False),
            limit_rate=self._limit_rate(scope.one("limit_rate")),
            limit_rate_after=_size(scope.one("limit_rate_after"), 0),
        )

    def _limit_rate(self, node: Node | None) -> Template | None:
        """limit_rate RATE: a size, or a value with variables read per request; 0 is none."""
        if node is None:
            return None
        template = _template(node, node.args[0])
        if template.is_constant:
            return None if _size(node, 0) == 0 else template
        return template

    def _temp_path(self, node: Node | None) -> str:
        path = node.args[0] if node is not None else "client_body_temp"
        return path if os.path.isabs(path) else os.path.join(self.prefix, path)

    def _handler(self, node: Node, in_regex: bool) -> Handler:
        if node.name == "upstream_show":
            return UpstreamShow()
        if node.name == "return":
            return Return(*self._return(node))
        return self._proxy_pass(node, in_regex)

    def _return(self, node: Node) -> tuple[int, Template | None]:
        step = parse_return(node)
        return step.code, step.text

    def _proxy_pass(self, node: Node, in_regex: bool) -> ProxyPass:
        url = node.args[0]
        literal = url.partition("$")[0]
        if "$" in url and "://" not in literal and "http://".startswith(literal.lower()):
            # the variables may make the prefix too ("http:/$uri"): the whole URL is computed
            # per request and its prefix checked then, as nginx does
            return ProxyPass("http", None, _template(node, url), None)
        scheme, sep, rest = url.partition("://")
        if not sep or scheme.lower() != "http":
            if sep and scheme.lower() == "https":
                raise node.error('https upstreams are not supported by upsync in "proxy_pass"')
            raise node.error(f'invalid URL prefix in "{url}"')
        if "$" in rest:
            return ProxyPass("http", None, _template(node, url), None)
        if rest.startswith(UNIX):
            # "unix:/path/to.sock" or "unix:/path/to.sock:/uri", as nginx writes it
            end = rest.find(":", len(UNIX))
            host, socket_uri = (rest[:end], rest[end + 1 :]) if end > 0 else (rest, "")
            try:
                unix_address(host)
            except ServerLineError as exc:
                raise node.error(f'{exc} in "proxy_pass" directive') from None
            if socket_uri and not socket_uri.startswith("/"):
                raise node.error(f'invalid URL prefix in "{url}"')
            if socket_uri and in_regex:
                raise node.error(
                    '"proxy_pass" cannot have URI part in location given by regular expression, or '
                    'inside "if" statement'
                )
            self.implicit_upstreams.setdefault(host, node)
            return ProxyPass("http", host, None, socket_uri or None)
        host, slash, uri = rest.partition("/")
        if not host:
            raise node.error(f'no host in "{url}" of the "proxy_pass" directive')
        if slash and in_regex:
            raise node.error(
                '"proxy_pass" cannot have URI part in location given by regular expression, or '
                'inside "if" statement'
            )
        if host not in self.upstream_names:
            try:
                split_address(host)
            except ServerLineError as exc:
                raise node.error(f'{exc} in "proxy_pass" directive') from None
            self.implicit_upstreams.setdefault(host, node)
        return ProxyPass("http", host, None, "/" + uri if slash else None)

    def _proxy_settings(self, scope: Scope) -> ProxySettings:
        headers: list[tuple[str, Template]] = []
        for node in scope.all("proxy_set_header"):
            if len(node.args) != 2:
                raise node.error('invalid number of arguments in "proxy_set_header" directive')
            headers.append((node.args[0], _template(node, node.args[1])))
        version_node = scope.one("proxy_http_version")
        version = version_node.args[0] if version_node else "1.0"
        if version not in ("1.0", "1.1") and version_node is not None:
            raise version_node.invalid(version)
        next_node = scope.one("proxy_next_upstream")
        conditions = frozenset({"error", "timeout"})
        if next_node is not None:
            for arg in next_node.args:
                if arg not in NEXT_UPSTREAM_CONDITIONS:
                    raise next_node.invalid(arg)
            conditions = frozenset(next_node.args)
            if "off" in conditions:
                if len(conditions) > 1:
                    raise next_node.error(
                        '"off" cannot be combined with other values in "proxy_next_upstream"'
                    )
                conditions = frozenset()
        return ProxySettings(
            set_headers=tuple(headers),
            http_version=version,
            connect_timeout=_time(scope.one("proxy_connect_timeout"), 60.0),
            send_timeout=_time(scope.one("proxy_send_timeout"), 60.0),
            read_timeout=_time(scope.one("proxy_read_timeout"), 60.0),
            next_upstream=conditions,
            next_upstream_tries=_int(scope.one("proxy_next_upstream_tries"), 0),
            next_upstream_timeout=_time(scope.one("proxy_next_upstream_timeout"), 0.0),
            buffering=_flag(scope.one("proxy_buffering"), True),
            request_buffering=_flag(scope.one("proxy_request_buffering"), True),
            buffer_size=_size(scope.one("proxy_buffer_size"), 4096),
            redirects=_redirects(scope.all("proxy_redirect")),
            hide_headers=frozenset(n.args[0].lower() for n in scope.all("proxy_hide_header")),
            pass_headers=frozenset(n.args[0].lower() for n in scope.all("proxy_pass_header")),
            method=self._optional_template(scope.one("proxy_method")),
            pass_request_headers=_flag(scope.one("proxy_pass_request_headers"), True),
            pass_request_body=_flag(scope.one("proxy_pass_request_body"), True),
            set_body=self._optional_template(scope.one("proxy_set_body")),
            cookie_domains=_cookie_rules(scope.all("proxy_cookie_domain"), domain=True),
            cookie_paths=_cookie_rules(scope.all("proxy_cookie_path"), domain=False),
            cookie_flags=_cookie_flags(scope.all("proxy_cookie_flags")),
            bind=_bind(scope.one("proxy_bind")),
            bind_transparent=_bind_transparent(scope.one("proxy_bind")),
            limit_rate=_size(scope.one("proxy_limit_rate"), 0),
            ignore_headers=_ignored_headers(scope.one("proxy_ignore_headers")),
        )

    def _optional_template(self, node: Node | None) -> Template | None:
        return None if node is None else _template(node, node.args[0])

    def _limit_except(
        self, node: Node, scope: Scope
    ) -> tuple[frozenset[bytes], tuple[AccessRule, ...]]:
        """limit_except METHOD... { allow|deny ...; }: the methods named, and the rules the
        others meet (the location's when the block has none, as nginx inherits them)."""
        methods = {method.upper().encode() for method in node.args}
        if b"GET" in methods:
            methods.add(b"HEAD")
        rules: list[Node] = []
        for child in node.block or ():
            if child.name not in ("allow", "deny"):
                raise child.error(
                    f'"{child.name}" directive inside "limit_except" is not supported by upsync '
                    "(only allow and deny)"
                )
            rules.append(child)
        return frozenset(methods), self._access(scope.child(rules))

    def _access(self, scope: Scope) -> tuple[AccessRule, ...]:
        rules = []
        for node in scope.all("access"):
            value = node.args[0]
            if value != "all":
                try:
                    value = str(ipaddress.ip_network(value, strict=False))
                except ValueError:
                    raise node.error(f'invalid parameter "{value}"') from None
            rules.append(AccessRule(node.name == "allow", value))
        return tuple(rules)

    def _access_logs(self, scope: Scope) -> tuple[AccessLog, ...]:
        """access_log PATH [FORMAT [buffer=SIZE] [flush=TIME] [if=CONDITION]] ... | off: every
        one the level that has any gives (nginx writes to each)."""
        logs = []
        for node in scope.all("access_log"):
            path, *rest = node.args
            if path == "off":
                if rest:
                    raise node.error('invalid number of arguments in "access_log" directive')
                return ()
            format_name = "combined"
            condition: Template | None = None
            for index, arg in enumerate(rest):
                if arg.startswith("if="):
                    condition = _template(node, arg[3:])
                elif arg.startswith(("buffer=", "flush=")):
                    pass  # nginx's write buffering; upsync writes each line as it is made
                elif arg == "gzip" or arg.startswith("gzip="):
                    raise node.error('"access_log" with gzip is not supported by upsync')
                elif index == 0:
                    format_name = arg
                else:
                    raise node.error(f'invalid parameter "{arg}"')
            template = self.log_formats.get(format_name)
            if template is None:
                raise node.error(f'unknown log format "{format_name}"')
            if path not in ("stderr", "/dev/stdout", "/dev/stderr") and not os.path.isabs(path):
                path = os.path.join(self.prefix, path)
            logs.append(AccessLog(path, template, condition))
        return tuple(logs)

    def _keepalive_disable(self, node: Node | None) -> frozenset[str]:
        if node is None:
            return frozenset({"msie6"})
        for arg in node.args:
            if arg not in ("none", "msie6", "safari"):
                raise node.invalid(arg)
        return frozenset(node.args) - {"none"}
