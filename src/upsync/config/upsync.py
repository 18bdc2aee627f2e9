"""The `upsync` directive of nginx-upsync-module, with the parameters upsync adds."""

from dataclasses import dataclass
from typing import Literal

from upsync.config.model import BalanceKind, BalanceMethod, UpsyncDirectives
from upsync.config.servers import ServerLineError, split_address
from upsync.units import UnitError, parse_time

SyncKind = Literal["consul", "consul_services", "consul_health", "etcd", "etcdv3", "file"]
KINDS: tuple[SyncKind, ...] = (
    "consul",
    "consul_services",
    "consul_health",
    "etcd",
    "etcdv3",
    "file",
)
LB_METHODS = ("roundrobin", "round_robin", "ip_hash", "least_conn", "hash_modula", "hash_ketama")


class UpsyncError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Endpoint:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class SyncSpec:
    kind: SyncKind
    endpoints: tuple[Endpoint, ...]  # tried in turn; empty for `file`
    path: str  # the registry path (or the watched file or directory)
    interval: float = 5.0
    timeout: float = 360.0
    strong_dependency: bool = False
    dump_path: str = ""
    scheme: str = "http"
    username: str | None = None
    password: str | None = None
    token: str | None = None  # Consul ACL token
    datacenter: str | None = None
    consistency: str | None = None  # Consul: "consistent" or "stale"
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None

    @property
    def address(self) -> str:
        if self.kind == "file":
            return self.path
        return f"{self.scheme}://{','.join(map(str, self.endpoints))}{self.path}"


def _flag(key: str, value: str) -> bool:
    if value not in ("on", "off"):
        raise UpsyncError(f'invalid value "{key}={value}", it must be "on" or "off"')
    return value == "on"


def _time(key: str, value: str) -> float:
    try:
        seconds = parse_time(value)
    except UnitError:
        raise UpsyncError(f'invalid value "{key}={value}"') from None
    if seconds <= 0:
        raise UpsyncError(f'"{key}" must be above zero')
    return seconds


def parse_upsync(
    args: tuple[str, ...], dump_path: str | None, upstream: str, token_from_env: str | None = None
) -> SyncSpec:
    """`upsync ADDRESS[,ADDRESS...]/PATH [key=value ...]` into a SyncSpec (pure)."""
    location, params = args[0], args[1:]
    options: dict[str, str] = {}
    for param in params:
        key, sep, value = param.partition("=")
        if not sep or not value:
            raise UpsyncError(f'invalid parameter "{param}"')
        options[key] = value
    kind = options.pop("upsync_type", "consul")
    if kind not in KINDS:
        raise UpsyncError(f'invalid upsync_type "{kind}" (one of {", ".join(KINDS)})')
    interval = _time("upsync_interval", options.pop("upsync_interval", "5s"))
    timeout = _time("upsync_timeout", options.pop("upsync_timeout", "6m"))
    strong = _flag("strong_dependency", options.pop("strong_dependency", "off"))
    token = options.pop("upsync_token", None) or options.pop("token", None)
    datacenter = options.pop("upsync_dc", None)
    consistency = options.pop("upsync_consistency", None)
    if consistency not in (None, "default", "consistent", "stale"):
        raise UpsyncError(f'invalid upsync_consistency "{consistency}"')
    ca_file = options.pop("upsync_ssl_trusted_certificate", None)
    cert_file = options.pop("upsync_ssl_certificate", None)
    key_file = options.pop("upsync_ssl_certificate_key", None)
    if options:
        raise UpsyncError(f'invalid parameter "{next(iter(options))}"')
    dump = dump_path or f"/tmp/servers_{upstream}.conf"
    if kind == "file":
        return SyncSpec(kind, (), location, interval, timeout, strong, dump)
    scheme = "http"
    if "://" in location:
        scheme, _, location = location.partition("://")
        if scheme not in ("http", "https"):
            raise UpsyncError(f'invalid scheme "{scheme}" in "{args[0]}"')
    username = password = None
    if "@" in location.split("/", 1)[0]:
        credentials, _, location = location.partition("@")
        username, _, password = credentials.partition(":")
    hosts, slash, path = location.partition("/")
    if not slash or not hosts:
        example = f"127.0.0.1:2379/v2/keys/upstreams/{upstream}"
        raise UpsyncError(f'"{args[0]}" needs ADDRESS/PATH, e.g. {example}')
    endpoints = []
    for host in hosts.split(","):
        try:
            name, port = split_address(host, default_port=0)
        except ServerLineError as exc:
            raise UpsyncError(str(exc)) from None
        if port == 0:
            raise UpsyncError(f'no port in registry address "{host}"')
        endpoints.append(Endpoint(name, port))
    if cert_file or key_file or ca_file:
        scheme = "https"
    return SyncSpec(
        kind=kind,
        endpoints=tuple(endpoints),
        path="/" + path,
        interval=interval,
        timeout=timeout,
        strong_dependency=strong,
        dump_path=dump,
        scheme=scheme,
        username=username,
        password=password,
        token=token or (token_from_env if kind.startswith("consul") else None),
        datacenter=datacenter,
        consistency=None if consistency == "default" else consistency,
        ca_file=ca_file,
        cert_file=cert_file,
        key_file=key_file,
    )


def apply_upsync_lb(method: BalanceMethod, sync: UpsyncDirectives) -> BalanceMethod:
    """`upsync_lb` names the method the C module should use; upsync reads it the same way and
    checks it against the upstream's own balancing directive."""
    lb = sync.lb
    if lb is None or lb in ("roundrobin", "round_robin"):
        if lb is not None and method.kind != "round_robin":
            raise UpsyncError(f'upsync_lb {lb} conflicts with "{method.kind}" in this upstream')
        return method
    if lb not in LB_METHODS:
        raise UpsyncError(f'invalid upsync_lb "{lb}" (one of {", ".join(LB_METHODS)})')
    if lb in ("least_conn", "ip_hash"):
        if method.kind not in ("round_robin", lb):
            raise UpsyncError(f'upsync_lb {lb} conflicts with "{method.kind}" in this upstream')
        kind: BalanceKind = "least_conn" if lb == "least_conn" else "ip_hash"
        return BalanceMethod(kind, where=method.where)
    if method.kind != "hash" or method.key is None:
        raise UpsyncError(f'upsync_lb {lb} needs a "hash KEY" directive in this upstream')
    return BalanceMethod("hash", key=method.key, consistent=lb == "hash_ketama", where=method.where)
