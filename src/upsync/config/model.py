"""The validated configuration: immutable values built once from the parsed files."""

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from upsync.config.expires import Expires
from upsync.config.regex import Regex
from upsync.config.variables import Template

if TYPE_CHECKING:
    from upsync.config.maps import VariableMap
    from upsync.config.rewrite import Step
    from upsync.config.upsync import SyncSpec

BalanceKind = Literal["round_robin", "least_conn", "ip_hash", "hash", "random"]


# The largest server weight upsync takes (nginx takes any int). Weights are relative, so 1,000
# already splits traffic to 0.1 %; without a bound one registry value (weight=20000) would make
# `hash ... consistent` build a ring of 3.2 million points and stall every request meanwhile.
MAX_WEIGHT = 1000


@dataclass(frozen=True, slots=True)
class ServerSpec:
    """One upstream server: from a `server` line, a registry entry or a dump file line."""

    name: str  # "ip:port", as upstream_show and the dump print it
    host: str  # where to connect
    port: int
    weight: int = 1
    max_fails: int = 1
    fail_timeout: float = 10.0
    max_conns: int = 0
    backup: bool = False
    down: bool = False
    # The address as written on the `server` line: what `hash ... consistent` hashes, as nginx does.
    written: str = ""


@dataclass(frozen=True, slots=True)
class BalanceMethod:
    kind: BalanceKind = "round_robin"
    key: Template | None = None  # hash KEY
    consistent: bool = False  # hash KEY consistent
    two: bool = False  # random two
    where: tuple[str, int] = ("", 0)


@dataclass(frozen=True, slots=True)
class UpsyncDirectives:
    """Raw `upsync*` directives of an upstream, interpreted by the registry sources."""

    upsync: tuple[str, ...] | None = None
    dump_path: str | None = None
    lb: str | None = None
    where: tuple[str, int] = ("", 0)


@dataclass(frozen=True, slots=True)
class UpstreamConfig:
    name: str
    servers: tuple[ServerSpec, ...]
    method: BalanceMethod
    keepalive: int = 0  # idle connections cached per upstream; 0 disables the cache
    keepalive_timeout: float = 60.0
    keepalive_requests: int = 1000
    keepalive_time: float = 3600.0  # a cached connection older than this is closed, not reused
    sync: UpsyncDirectives = field(default_factory=UpsyncDirectives)
    where: tuple[str, int] = ("", 0)
    implicit: bool = False  # made by `proxy_pass http://host:port`, not an `upstream` block
    sync_spec: "SyncSpec | None" = None  # where the server list comes from at run time


@dataclass(frozen=True, slots=True)
class Listen:
    host: str  # "" means every address
    port: int
    default_server: bool = False


@dataclass(frozen=True, slots=True)
class AccessRule:
    allow: bool
    network: str  # "all" or an ip_network string


@dataclass(frozen=True, slots=True)
class ProxyPass:
    """`proxy_pass`: a fixed upstream (or host:port) or a target computed per request."""

    scheme: str
    upstream: str | None  # upstream name or "host:port", None when it has variables
    target: Template | None  # the whole URL, when it has variables
    uri: str | None  # URI part after the host, None when absent
    port: int = 80


@dataclass(frozen=True, slots=True)
class Return:
    code: int
    text: Template | None  # body, or Location for redirects


@dataclass(frozen=True, slots=True)
class UpstreamShow:
    pass


@dataclass(frozen=True, slots=True)
class StaticFiles:
    """A location without proxy_pass or return serves files, as nginx's static module."""

    root: str  # absolute; with `alias`, what replaces the location's prefix
    alias: bool
    index: tuple[str, ...] = ("index.html",)
    # the prefix an alias replaces: its location's, also in a nested location that inherits
    # it (nginx); None in a regex location (the URI goes after the alias whole)
    prefix: str | None = None


Handler = ProxyPass | Return | UpstreamShow | StaticFiles | None


@dataclass(frozen=True, slots=True)
class RewriteRule:
    """proxy_redirect, proxy_cookie_domain, proxy_cookie_path FROM TO: a string to match
    (redirect, path: a prefix; domain: the whole value, ignoring case and a leading dot), or a
    regex (domain: always ignoring case); and what replaces it (the part matched, or the whole
    value after a regex). Both sides may have variables."""

    match: Template | None
    regex: Regex | None
    replacement: Template


COOKIE_FLAGS = frozenset(
    {
        "secure",
        "nosecure",
        "httponly",
        "nohttponly",
        "samesite=strict",
        "samesite=lax",
        "samesite=none",
        "nosamesite",
    }
)


@dataclass(frozen=True, slots=True)
class CookieFlags:
    """proxy_cookie_flags COOKIE FLAG...: the cookie by name (ignoring case; variables
    allowed) or by a caseless regex, and the flags to set or clear (variables allowed)."""

    name: Template | None
    regex: Regex | None
    flags: tuple[Template, ...]


@dataclass(frozen=True, slots=True)
class ProxySettings:
    set_headers: tuple[tuple[str, Template], ...]
    http_version: str = "1.0"
    connect_timeout: float = 60.0
    send_timeout: float = 60.0
    read_timeout: float = 60.0
    next_upstream: frozenset[str] = frozenset({"error", "timeout"})
    next_upstream_tries: int = 0
    next_upstream_timeout: float = 0.0
    buffering: bool = True
    # proxy_request_buffering off: a body is sent as it arrives, not read first (no retry
    # once any of it went)
    request_buffering: bool = True
    buffer_size: int = 4096  # proxy_buffer_size: the largest response head accepted
    # proxy_redirect: rules for Location and Refresh, in order; None stands for `default` (the
    # proxy_pass URL, worked out per location); the tuple is None when no level sets any,
    # which is `default` as in nginx
    redirects: "tuple[RewriteRule | None, ...] | None" = None
    hide_headers: frozenset[str] = frozenset()  # proxy_hide_header, lower case
    pass_headers: frozenset[str] = frozenset()  # proxy_pass_header, lower case
    method: Template | None = None  # proxy_method; None: the client's
    pass_request_headers: bool = True
    pass_request_body: bool = True
    set_body: Template | None = None  # proxy_set_body: sent instead of the client's body
    # proxy_cookie_domain, proxy_cookie_path: Set-Cookie rewrites, in order (RewriteRule)
    cookie_domains: tuple[RewriteRule, ...] = ()
    cookie_paths: tuple[RewriteRule, ...] = ()
    cookie_flags: tuple[CookieFlags, ...] = ()  # proxy_cookie_flags, the first matching one
    # proxy_bind ADDRESS[:PORT] [transparent]: the upstream connection's own address (an
    # empty value: none); transparent binds an address this host does not have (IP_TRANSPARENT)
    bind: Template | None = None
    bind_transparent: bool = False
    limit_rate: int = 0  # proxy_limit_rate: bytes a second read from the upstream (0: no limit)
    # proxy_ignore_headers, lower case: of them X-Accel-Redirect and X-Accel-Limit-Rate change
    # what upsync does; the others only matter to a cache, which upsync does not have
    ignore_headers: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class ErrorPage:
    """error_page CODE... [=[RESPONSE]] URI: a response with one of the codes is replaced by
    what URI (a path, "@named" location, or an absolute URL to redirect to) answers."""

    codes: frozenset[int]
    target: Template
    # the final status: the original code (None), the error page's own ("="), or this one
    status: int | Literal["="] | None = None


@dataclass(frozen=True, slots=True)
class AccessLog:
    path: str
    format: Template
    condition: Template | None = None  # if=: a line only when it is neither "" nor "0"


@dataclass(frozen=True, slots=True)
class LocationConfig:
    modifier: str  # "", "=", "^~", "~", "~*"
    path: str
    regex: Regex | None
    handler: Handler
    proxy: ProxySettings
    access: tuple[AccessRule, ...]
    client_max_body_size: int
    client_body_buffer_size: int  # a body past it waits in a file in client_body_temp_path
    client_body_temp_path: str
    keepalive_timeout: float
    keepalive_time: float  # a connection's longest life: the response after it says close
    keepalive_requests: int  # a connection's last request, per location as in nginx
    keepalive_header: int  # keepalive_timeout's second value: "Keep-Alive: timeout=N" (0: none)
    # keepalive_disable: the browsers kept-alive connections are closed for (msie6: after a
    # POST from MSIE 6 and older; safari); neither with `keepalive_disable none`
    keepalive_disable_msie6: bool
    keepalive_disable_safari: bool
    default_type: str
    access_logs: tuple[AccessLog, ...]  # none: off
    where: tuple[str, int] = ("", 0)
    server_tokens: bool = True  # the version in the Server header and on error pages
    # a redirect to "/path" that upsync writes (return, or proxy_redirect's result) is made
    # http://host[:port]/path, host being the Host header's unless server_name_in_redirect
    absolute_redirect: bool = True
    port_in_redirect: bool = True
    server_name_in_redirect: bool = False
    # add_header NAME VALUE [always], in order: (name, value, always)
    add_headers: tuple[tuple[str, Template, bool], ...] = ()
    add_trailers: tuple[tuple[str, Template, bool], ...] = ()  # add_trailer, the same way
    # chunked_transfer_encoding off: an HTTP/1.1 answer of unknown length ends with the
    # connection instead, and gets no trailers
    chunked_transfer_encoding: bool = True
    error_pages: tuple[ErrorPage, ...] = ()
    rewrites: "tuple[Step, ...]" = ()  # set, rewrite, break, return, if: run in order
    # `types`: file extension (lower case) to Content-Type, for files a location serves
    types: dict[str, str] = field(default_factory=dict)
    locations: tuple["LocationConfig", ...] = ()  # nested in this one
    # try_files FILE... URI|=CODE: the files (relative to `files`' root) and the last resort
    try_files: tuple[Template, ...] = ()
    files: StaticFiles | None = None  # where this location's files are (root or alias)
    expires: Expires | None = None  # None: off
    intercept_errors: bool = False  # proxy_intercept_errors: error_page for upstream answers
    recursive_error_pages: bool = False
    # limit_rate RATE (bytes a second to the client; variables allowed; None: no limit) and
    # limit_rate_after SIZE (sent before the limit starts)
    limit_rate: Template | None = None
    limit_rate_after: int = 0
    internal: bool = False  # only internal redirects reach it (others get 404)
    # limit_except METHOD... { allow/deny }: the methods it names (GET brings HEAD), and the
    # access rules every other method meets instead of the location's
    limit_except: tuple[frozenset[bytes], tuple["AccessRule", ...]] | None = None
    # a prefix location ending in "/" with proxy_pass: a request for its name without the
    # slash gets a 301 to it (nginx's auto_redirect)
    auto_redirect: bool = False
    # client_body_in_file_only: "off", "on" (the file is kept after the request), "clean"
    client_body_in_file_only: str = "off"


@dataclass(frozen=True, slots=True)
class ClientLimits:
    client_header_timeout: float = 60.0
    client_body_timeout: float = 60.0
    send_timeout: float = 60.0
    header_buffer_size: int = 32 * 1024  # large_client_header_buffers: number * size
    line_size: int = 8192  # large_client_header_buffers: size, the longest request/header line
    ignore_invalid_headers: bool = True
    underscores_in_headers: bool = False
    lingering_close: str = "on"  # on | off | always
    lingering_time: float = 30.0
    lingering_timeout: float = 5.0


@dataclass(frozen=True, slots=True)
class ServerBlock:
    listens: tuple[Listen, ...]
    names: tuple[str, ...]
    locations: tuple[LocationConfig, ...]
    fallback: LocationConfig  # answers 404 when no location matches, with the server's settings
    limits: ClientLimits
    where: tuple[str, int] = ("", 0)
    named: dict[str, LocationConfig] = field(default_factory=dict)  # `location @name`
    rewrites: "tuple[Step, ...]" = ()  # the server's rewrite phase, before a location is chosen


@dataclass(frozen=True, slots=True)
class MainConfig:
    worker_processes: int = 1
    worker_connections: int = 512
    worker_rlimit_nofile: int = 0  # 0: as inherited (raised if worker_connections needs it)
    pid: str = "logs/upsync.pid"
    error_log: str = "stderr"
    error_log_level: str = "error"
    daemon: bool = False
    master_process: bool = True
    worker_shutdown_timeout: float = 0.0  # 0: a quitting worker waits for its last request


@dataclass(frozen=True, slots=True)
class Config:
    path: str
    prefix: str
    main: MainConfig
    upstreams: dict[str, UpstreamConfig]
    servers: tuple[ServerBlock, ...]
    maps: dict[str, "VariableMap"] = field(default_factory=dict)
    files: tuple[str, ...] = ()
    notices: tuple[str, ...] = ()
