"""Read an nginx-syntax config with crossplane and validate it into a Config."""

import functools
import os
import tempfile
from typing import Any

import crossplane
from crossplane import analyzer

from upsync.config import directives
from upsync.config.http import COMBINED_FORMAT, INHERITED, HttpBuilder, _template
from upsync.config.maps import VariableMap, build_map, find_cycle, map_names, named_groups
from upsync.config.model import BalanceMethod, Config, MainConfig, ServerBlock, UpstreamConfig
from upsync.config.nodes import Node, Scope, nodes_from_crossplane
from upsync.config.servers import ServerLineError, parse_server_params, resolve
from upsync.config.upstream import build_upstream
from upsync.config.variables import Template, compile_template, declaring
from upsync.errors import ConfigError
from upsync.units import parse_time

directives.register()

ERROR_LEVELS = ("debug", "info", "notice", "warn", "error", "crit", "alert", "emerg")
# blocks whose entries are data (`text/html html;`, `example.com 1;`), not directives
DATA_BLOCKS = frozenset({"map", "types", "geo", "split_clients", "charset_map"})


def _unknown_directive(statements: list[dict[str, Any]], file: str) -> dict[str, Any] | None:
    """crossplane's strict mode, less its one mistake: it takes the entries of a `map` or
    `types` block for directives."""
    for stmt in statements:
        if stmt["directive"] not in analyzer.DIRECTIVES:
            return {
                "error": f'unknown directive "{stmt["directive"]}"',
                "file": stmt.get("file", file),
                "line": stmt["line"],
            }
        block = stmt.get("block")
        if block and stmt["directive"] not in DATA_BLOCKS:
            found = _unknown_directive(block, stmt.get("file", file))
            if found is not None:
                return found
    return None


def _parse_file(path: str) -> tuple[Node, ...]:
    payload: dict[str, Any] = crossplane.parse(
        path, strict=False, combine=True, check_ctx=True, check_args=True
    )
    if payload["status"] == "ok":
        config = payload["config"][0]
        unknown = _unknown_directive(config["parsed"], config["file"])
        if unknown is not None:
            payload = {"status": "failed", "errors": [unknown]}
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
        upstreams, servers, maps = self._http(http)
        main.setdefault("pid", self._path("logs/upsync.pid"))
        return Config(
            path=self.path,
            prefix=self.prefix,
            main=MainConfig(**main),
            upstreams=upstreams,
            servers=servers,
            maps=maps,
            files=tuple(sorted(self.files)),
            notices=tuple(self.notices),
        )

    def _http(
        self, http: Node
    ) -> tuple[dict[str, UpstreamConfig], tuple[ServerBlock, ...], dict[str, VariableMap]]:
        """Built with every variable the block declares known: its maps and its regexes' named
        captures may be used anywhere in it, before they are written too."""
        nodes = http.block or ()
        with declaring(frozenset(_declared_variables(nodes))):
            maps: dict[str, VariableMap] = {}
            for name, node in map_names(nodes):
                if name in maps:
                    raise node.error(f'duplicate "{name}" variable')
                maps[name] = build_map(node)
            cycle = find_cycle(maps)
            if cycle is not None:
                node = dict(map_names(nodes))[cycle[0]]
                raise node.error(
                    "cycle in map variables: " + " -> ".join(f"${name}" for name in cycle)
                )
            upstreams, servers = self._http_blocks(http)
        return upstreams, servers, maps

    def _http_blocks(
        self, http: Node
    ) -> tuple[dict[str, UpstreamConfig], tuple[ServerBlock, ...]]:
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
            elif node.name == "map":
                pass  # built first (see _http)
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


def _declared_variables(nodes: tuple[Node, ...]) -> list[str]:
    """Map names, and the named captures of every regex (server names, locations, map keys)."""
    names = [name for name, _ in map_names(nodes)]
    for node in nodes:
        if node.name == "server_name":
            names += [g for arg in node.args if arg.startswith("~") for g in named_groups(arg)]
        elif node.name == "location" and node.args and node.args[0].startswith("~"):
            names += named_groups(node.args[-1])
        elif node.name == "set" and node.args and node.args[0].startswith("$"):
            names.append(node.args[0][1:])
        elif node.name == "rewrite" and node.args:
            names += named_groups(node.args[0])
        elif node.name == "if" and len(node.args) == 3 and "~" in node.args[1]:
            names += named_groups(node.args[2])
        elif node.name == "map":
            names += [g for entry in node.block or () for g in named_groups(entry.name)]
            continue
        if node.block:
            names += _declared_variables(node.block)
    return names
