"""Read an nginx-syntax config with crossplane and validate it into a Config."""

import functools
import os
import tempfile
from typing import Any

import crossplane

from upsync.config import directives
from upsync.config.http import COMBINED_FORMAT, INHERITED, HttpBuilder, _template
from upsync.config.model import BalanceMethod, Config, MainConfig, ServerBlock, UpstreamConfig
from upsync.config.nodes import Node, Scope, nodes_from_crossplane
from upsync.config.servers import ServerLineError, parse_server_params, resolve
from upsync.config.upstream import build_upstream
from upsync.config.variables import Template, compile_template
from upsync.errors import ConfigError
from upsync.units import parse_time

directives.register()

ERROR_LEVELS = ("debug", "info", "notice", "warn", "error", "crit", "alert", "emerg")


def _parse_file(path: str) -> tuple[Node, ...]:
    payload: dict[str, Any] = crossplane.parse(
        path, strict=True, combine=True, check_ctx=True, check_args=True
    )
    if payload["status"] != "ok":
        first = payload["errors"][0]
        # crossplane's message already ends with " in FILE:LINE"; keep nginx's wording.
        message: str = first["error"]
        suffix = f" in {first['file']}:{first['line']}"
        if message.endswith(suffix):
            message = message[: -len(suffix)]
        raise ConfigError(message, first["file"], first["line"])
    config = payload["config"][0]
    return nodes_from_crossplane(config["parsed"], config["file"])


@functools.lru_cache(maxsize=4)
def _parse_globals(text: str) -> tuple[Node, ...]:
    """`-g "pid x; daemon off;"`: main-context directives given on the command line (parsed
    once: every reload passes the same)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "global directives")
        with open(path, "w") as handle:
            handle.write(text)
        nodes = _parse_file(path)
    return tuple(Node(n.name, n.args, "command line", n.line, n.block) for n in nodes)


def load_config(
    path: str, prefix: str | None = None, global_directives: str = "", error_log: str = ""
) -> Config:
    """`error_log`: nginx's -e, the error log unless the configuration names one."""
    path = os.path.abspath(path)
    if not os.path.isfile(path):
        raise ConfigError(f'open() "{path}" failed (No such file or directory)')
    prefix = os.path.abspath(prefix or os.path.dirname(path))
    nodes = _parse_file(path)
    if error_log:
        nodes = _parse_globals(f'error_log "{error_log}";') + nodes
    if global_directives:
        nodes = nodes + _parse_globals(global_directives)
    return _Builder(path, prefix).build(nodes)


def _flag(node: Node) -> bool:
    value = node.args[0].lower()
    if value not in ("on", "off"):
        raise node.error(
            f'invalid value "{node.args[0]}" in "{node.name}" directive, it must be "on" or "off"'
        )
    return value == "on"


class _Builder:
    def __init__(self, path: str, prefix: str) -> None:
        self.path = path
        self.prefix = prefix
        self.notices: list[str] = []
        self.files: set[str] = {path}

    def notice(self, node: Node) -> None:
        why = directives.refusal(node.name, list(node.args))
        if why is not None:
            raise node.error(f'"{node.name}" directive: {why}')
        self.notices.append(
            f'"{node.name}" directive is ignored by upsync in {node.file}:{node.line}'
        )

    def _path(self, value: str) -> str:
        if value in ("stderr", "/dev/stderr", "/dev/stdout"):
            return value
        return value if os.path.isabs(value) else os.path.join(self.prefix, value)

    def build(self, nodes: tuple[Node, ...]) -> Config:
        main: dict[str, Any] = {}
        http: Node | None = None
        for node in nodes:
            self.files.add(node.file)
            if node.name == "worker_processes":
                value = node.args[0]
                if value == "auto":
                    main["worker_processes"] = os.cpu_count() or 1
                elif value.isdigit() and int(value) > 0:
                    main["worker_processes"] = int(value)
                else:
                    raise node.invalid(value)
            elif node.name == "worker_rlimit_nofile":
                if not node.args[0].isdigit() or int(node.args[0]) == 0:
                    raise node.invalid(node.args[0])
                main["worker_rlimit_nofile"] = int(node.args[0])
            elif node.name == "pid":
                main["pid"] = self._path(node.args[0])
            elif node.name == "error_log":
                main["error_log"] = self._path(node.args[0])
                if len(node.args) > 1:
                    if node.args[1] not in ERROR_LEVELS:
                        raise node.invalid(node.args[1])
                    main["error_log_level"] = node.args[1]
            elif node.name in ("daemon", "master_process"):
                main[node.name] = _flag(node)
            elif node.name == "worker_shutdown_timeout":
                try:
                    main["worker_shutdown_timeout"] = parse_time(node.args[0])
                except ValueError:
                    raise node.invalid(node.args[0]) from None
            elif node.name == "load_module":
                self.notices.append(
                    f"load_module {node.args[0]} is ignored: upsync has its modules built in "
                    f"({node.file}:{node.line})"
                )
            elif node.name == "events":
                for child in node.block or ():
                    if child.name == "worker_connections":
                        if not child.args[0].isdigit():
                            raise child.invalid(child.args[0])
                        main["worker_connections"] = int(child.args[0])
                    elif child.name in directives.IGNORED:
                        self.notice(child)
                    else:
                        raise child.error(f'"{child.name}" directive is not supported by upsync')
            elif node.name == "http":
                if http is not None:
                    raise node.error('"http" directive is duplicate')
                http = node
            elif node.name in directives.IGNORED:
                self.notice(node)
            else:
                raise node.error(f'"{node.name}" directive is not supported by upsync')
        if http is None:
            raise ConfigError('no "http" block', self.path)
        upstreams, servers = self._http(http)
        main.setdefault("pid", self._path("logs/upsync.pid"))
        return Config(
            path=self.path,
            prefix=self.prefix,
            main=MainConfig(**main),
            upstreams=upstreams,
            servers=servers,
            files=tuple(sorted(self.files)),
            notices=tuple(self.notices),
        )

    def _http(self, http: Node) -> tuple[dict[str, UpstreamConfig], tuple[ServerBlock, ...]]:
        upstreams: dict[str, UpstreamConfig] = {}
        server_nodes: list[Node] = []
        inherited: list[Node] = []
        log_formats: dict[str, Template] = {"combined": compile_template(COMBINED_FORMAT)}
        for node in http.block or ():
            self.files.add(node.file)
            if node.name == "upstream":
                if node.args[0] in upstreams:
                    raise node.error(f'duplicate upstream "{node.args[0]}"')
                upstreams[node.args[0]] = build_upstream(node, self.notices, self._path)
            elif node.name == "server":
                server_nodes.append(node)
            elif node.name in INHERITED:
                inherited.append(node)
            elif node.name == "log_format":
                text = "".join(a for a in node.args[1:] if not a.startswith("escape="))
                log_formats[node.args[0]] = _template(node, text)
            elif node.name in directives.IGNORED:
                self.notice(node)
            else:
                raise node.error(f'"{node.name}" directive is not supported in http by upsync')
        builder = HttpBuilder(set(upstreams), log_formats, self.prefix, self.notice)
        scope = Scope().child(inherited)
        servers = tuple(builder.server(node, scope) for node in server_nodes)
        for host, node in builder.implicit_upstreams.items():
            upstreams[host] = self._implicit_upstream(host, node)
        return upstreams, servers

    def _implicit_upstream(self, host: str, node: Node) -> UpstreamConfig:
        """`proxy_pass http://127.0.0.1:8080` makes an upstream of one server, as in nginx."""
        try:
            specs = resolve(parse_server_params(host, ()))
        except ServerLineError as exc:
            raise node.error(f'{exc} in "proxy_pass" directive') from None
        return UpstreamConfig(
            name=host,
            servers=tuple(specs),
            method=BalanceMethod(),
            where=node.where,
            implicit=True,
        )
