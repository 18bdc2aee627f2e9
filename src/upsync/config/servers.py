"""`server ADDRESS [params]` lines: shared by the config, dump files and file sources."""

import ipaddress
import re
import socket
from dataclasses import replace
from typing import Final

from upsync.config.model import MAX_WEIGHT, ServerSpec
from upsync.units import UnitError, parse_time


class ServerLineError(ValueError):
    pass


# what nginx takes as a host: a name or an IPv4 address ("*" for listen's wildcard); anything
# else, a ";" or a control character from a registry key, would be printed into upstream_show
# and the dump, and read back as configuration
_HOST: Final = re.compile(r"[A-Za-z0-9._-]+|\*")


def split_address(address: str, default_port: int = 80) -> tuple[str, int]:
    """Host and port of "host", "host:port", "[v6]" or "[v6]:port"."""
    if address.startswith("unix:"):
        raise ServerLineError(f'unix sockets are not supported: "{address}"')
    if address.startswith("["):
        end = address.find("]")
        if end < 0:
            raise ServerLineError(f'invalid address "{address}"')
        host = address[1:end]
        rest = address[end + 1 :]
        if rest and not rest.startswith(":"):
            raise ServerLineError(f'invalid address "{address}"')
        port_text = rest[1:] if rest else ""
        try:
            if "%" in host:  # a zone id: nginx takes none, and it may carry any character
                raise ValueError(host)
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ServerLineError(f'invalid IPv6 address "{address}"') from None
    else:
        host, sep, port_text = address.rpartition(":")
        if not sep:
            host, port_text = address, ""
        if not _HOST.fullmatch(host):
            raise ServerLineError(f'invalid address "{address}"')
    if port_text == "":
        return host, default_port
    # ASCII digits only: int() would also read "٢٧١٤٣"
    if not (port_text.isascii() and port_text.isdigit()) or not 0 < int(port_text) < 65536:
        raise ServerLineError(f'invalid port in "{address}"')
    return host, int(port_text)


UNIX: Final = "unix:"


def unix_address(address: str) -> str:
    """A "unix:/path" address as written, checked: an absolute path (port 0 stands for it)."""
    path = address[len(UNIX) :]
    if not path.startswith("/") or "\x00" in path:
        raise ServerLineError(f'invalid unix socket address "{address}"')
    return address


def format_name(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _positive_int(key: str, value: str, minimum: int) -> int:
    if not value.isdigit() or int(value) < minimum:
        raise ServerLineError(f'invalid parameter "{key}={value}"')
    return int(value)


def parse_server_params(
    address: str, params: tuple[str, ...] | list[str], *, max_fails: int = 1
) -> ServerSpec:
    """One ServerSpec for a server line, its host left unresolved (a "unix:/path" server is
    its own name, port 0)."""
    if address.startswith(UNIX):
        host, port = unix_address(address), 0
    else:
        host, port = split_address(address)
    spec = ServerSpec(
        name=format_name(host, port) if port else host,
        host=host,
        port=port,
        max_fails=max_fails,
        written=address,
    )
    for param in params:
        key, sep, value = param.partition("=")
        if not sep:
            if param == "backup":
                spec = replace(spec, backup=True)
            elif param == "down":
                spec = replace(spec, down=True)
            else:
                raise ServerLineError(f'invalid parameter "{param}"')
        elif key == "weight":
            weight = _positive_int(key, value, 1)
            if weight > MAX_WEIGHT:
                raise ServerLineError(
                    f'"{param}" is over upsync\'s limit of weight={MAX_WEIGHT} '
                    "(weights are relative: scale them down)"
                )
            spec = replace(spec, weight=weight)
        elif key == "max_fails":
            spec = replace(spec, max_fails=_positive_int(key, value, 0))
        elif key == "max_conns":
            spec = replace(spec, max_conns=_positive_int(key, value, 0))
        elif key == "fail_timeout":
            try:
                spec = replace(spec, fail_timeout=parse_time(value))
            except UnitError:
                raise ServerLineError(f'invalid parameter "{param}"') from None
        else:
            raise ServerLineError(f'invalid parameter "{param}"')
    return spec


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def resolve(spec: ServerSpec) -> list[ServerSpec]:
    """nginx resolves a name at load time into one server per address."""
    if is_ip(spec.host) or spec.host.startswith(UNIX):
        return [spec]
    try:
        infos = socket.getaddrinfo(spec.host, spec.port, type=socket.SOCK_STREAM)
    except OSError:
        raise ServerLineError(f'host not found in upstream "{spec.written}"') from None
    seen: list[str] = []
    for _family, _type, _proto, _canon, sockaddr in infos:
        ip = str(sockaddr[0])
        if ip not in seen:
            seen.append(ip)
    return [replace(spec, host=ip, name=format_name(ip, spec.port)) for ip in seen]
