"""Config files into the model; every error names file, line and directive."""

from pathlib import Path

import pytest

from upsync.config import load_config
from upsync.config.model import ProxyPass, Return, UpstreamShow
from upsync.errors import ConfigError

BASE = """
events {{ worker_connections 64; }}
http {{
{body}
}}
"""


def write(tmp_path: Path, body: str, name: str = "nginx.conf") -> Path:
    path = tmp_path / name
    path.write_text(BASE.format(body=body))
    return path


def load(tmp_path: Path, body: str):  # type: ignore[no-untyped-def]
    return load_config(str(write(tmp_path, body)))


def error_of(tmp_path: Path, body: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, body)
    return info.value


def test_upstream_servers_and_parameters(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        """
    upstream test {
        server 127.0.0.1:8001 weight=5 max_fails=3 fail_timeout=30s max_conns=10;
        server 127.0.0.1:8002 backup;
        server 127.0.0.1:8003 down;
        keepalive 32;
    }
    server { listen 8080; location / { proxy_pass http://test; } }
    """,
    )
    up = config.upstreams["test"]
    first, backup, down = up.servers
    assert (first.name, first.weight, first.max_fails, first.fail_timeout, first.max_conns) == (
        "127.0.0.1:8001",
        5,
        3,
        30.0,
        10,
    )
    assert backup.backup and down.down
    assert (backup.max_fails, backup.fail_timeout) == (1, 10.0)  # nginx's defaults
    assert up.keepalive == 32


def test_hostname_resolves_to_one_server_per_address(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        """
    upstream test { server localhost:8003; }
    server { listen 8080; location / { proxy_pass http://test; } }
    """,
    )
    servers = config.upstreams["test"].servers
    assert "127.0.0.1:8003" in [s.name for s in servers]
    assert all(s.written == "localhost:8003" for s in servers)


def test_balancing_methods(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        """
    upstream a { least_conn; server 127.0.0.1:1; }
    upstream b { ip_hash; server 127.0.0.1:1; }
    upstream c { hash $request_uri consistent; server 127.0.0.1:1; }
    upstream d { random two least_conn; server 127.0.0.1:1; }
    server { listen 8080; location / { proxy_pass http://a; } }
    """,
    )
    assert config.upstreams["a"].method.kind == "least_conn"
    assert config.upstreams["b"].method.kind == "ip_hash"
    assert config.upstreams["c"].method.consistent
    assert config.upstreams["d"].method.two


def test_locations_and_handlers(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        """
    upstream test { server 127.0.0.1:1; }
    server {
        listen 127.0.0.1:8080 default_server;
        server_name example.com *.example.org;
        proxy_read_timeout 5s;
        location = /exact { return 200 "hi"; }
        location ^~ /static/ { return 404; }
        location ~* \\.php$ { proxy_pass http://test; }
        location /api/ { proxy_pass http://test/v2/; proxy_read_timeout 1m; }
        location /upstream_list { upstream_show; }
    }
    """,
    )
    server = config.servers[0]
    assert server.listens[0].host == "127.0.0.1" and server.listens[0].default_server
    assert server.names == ("example.com", "*.example.org")
    by_path = {loc.path: loc for loc in server.locations}
    assert isinstance(by_path["/exact"].handler, Return)
    assert by_path["\\.php$"].modifier == "~*"
    api = by_path["/api/"]
    assert isinstance(api.handler, ProxyPass) and api.handler.uri == "/v2/"
    assert api.proxy.read_timeout == 60.0
    assert by_path["^~" and "/static/"].modifier == "^~"
    assert by_path["/exact"].proxy.read_timeout == 5.0  # inherited from server
    assert isinstance(by_path["/upstream_list"].handler, UpstreamShow)


def test_proxy_set_header_replaces_inherited_array(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        """
    proxy_set_header X-A a;
    upstream test { server 127.0.0.1:1; }
    server {
        listen 8080;
        location /one { proxy_pass http://test; }
        location /two { proxy_pass http://test; proxy_set_header X-B b; }
    }
    """,
    )
    one, two = config.servers[0].locations
    assert [name for name, _ in one.proxy.set_headers] == ["X-A"]
    assert [name for name, _ in two.proxy.set_headers] == ["X-B"]


def test_quoted_escapes_become_characters(tmp_path: Path) -> None:
    config = load(tmp_path, 'server { listen 8080; location / { return 200 "a\\nb"; } }')
    handler = config.servers[0].locations[0].handler
    assert isinstance(handler, Return) and handler.text is not None
    assert handler.text.text == "a\nb"


def test_proxy_pass_to_address_makes_implicit_upstream(tmp_path: Path) -> None:
    config = load(
        tmp_path, "server { listen 8080; location / { proxy_pass http://127.0.0.1:9000; } }"
    )
    assert config.upstreams["127.0.0.1:9000"].implicit


def test_include_with_glob(tmp_path: Path) -> None:
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "conf.d" / "a.conf").write_text("upstream a { server 127.0.0.1:1; }\n")
    (tmp_path / "conf.d" / "b.conf").write_text("upstream b { server 127.0.0.1:2; }\n")
    config = load(tmp_path, "include conf.d/*.conf; server { listen 8080; }")
    assert set(config.upstreams) == {"a", "b"}


def test_upsync_directives_are_accepted(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        """
    upstream test {
        server localhost:8003;
        upsync 127.0.0.1:2379/v2/keys/upstreams/ upsync_timeout=6m upsync_interval=500ms upsync_type=etcd strong_dependency=off;
        upsync_dump_path /tmp/servers_test.conf;
    }
    server { listen 80; location / { proxy_pass http://test; } location /upstream_list { upstream_show; } }
    """,
    )
    assert config.upstreams["test"].sync.upsync is not None


def test_load_module_is_a_notice(tmp_path: Path) -> None:
    path = tmp_path / "nginx.conf"
    path.write_text(
        "load_module modules/ngx_http_upsync_module.so;\n"
        + BASE.format(body="server { listen 80; }")
    )
    config = load_config(str(path))
    assert any("load_module" in notice for notice in config.notices)


@pytest.mark.parametrize(
    ("body", "line", "words"),
    [
        ("server { listen 80; foo bar; }", 4, 'unknown directive "foo"'),
        (
            "server { listen 80; }\n\nserver { listen 81; location / { proxy_pass x; } }",
            6,
            "invalid URL prefix",
        ),
        (
            "server { listen 80; }\nproxy_pass http://x;",
            5,
            '"proxy_pass" directive is not allowed here',
        ),
        (
            "upstream u {\n server 127.0.0.1:1 weight=0;\n}",
            5,
            'invalid parameter "weight=0" in "server" directive',
        ),
        (
            "upstream u {\n server 127.0.0.1:1\n server 127.0.0.1:2;\n}",
            5,
            'invalid parameter "server"',
        ),
        (
            "server {\n listen 80;\n location / { upstream_show; }\n proxy_read_timeout abc;\n}",
            7,
            '"proxy_read_timeout"',
        ),
        ("server { listen 80; location / { return 200 $nope; } }", 4, 'unknown "nope" variable'),
        (
            "upstream u { server 127.0.0.1:1; }\nupstream u { server 127.0.0.1:2; }",
            5,
            'duplicate upstream "u"',
        ),
        (
            "server { listen 80; location / { upsync 127.0.0.1:2379/x; } }",
            4,
            '"upsync" directive is not allowed here',
        ),
        (
            "server { listen 80; location / { proxy_pass http://u; proxy_pass http://u; } }",
            4,
            "duplicate",
        ),
        ("upstream u { ip_hash; server 127.0.0.1:1 backup; }", 4, "backup"),
        (
            "server { listen 80; ssl_certificate x; }",
            4,
            '"ssl_certificate" directive is not supported',
        ),
        ("map $uri $m {\n default $nope;\n}", 5, 'unknown "nope" variable'),
        ("map $uri $m {\n ~(unclosed 1;\n}", 5, "invalid regular expression"),
        ("map $uri $m { a 1; }\nmap $uri $m { b 2; }", 5, 'duplicate "m" variable'),
        ("map $uri $m {\n a 1;\n a 2;\n}", 6, 'duplicate map value "a"'),
        ("map $uri $m {\n a 1 2;\n}", 5, "invalid number of the map parameters"),
        ("map $c $b { default x; }\nmap $b $c { x 1; }", 4, "cycle in map variables: $b -> $c"),
        ("server { listen 80; map $uri $m { } }", 4, '"map" directive is not allowed here'),
        ("server { listen 80; error_page 404; }", 4, 'invalid number of arguments in "error_page"'),
        ("server { listen 80; error_page 200 /x; }", 4, 'value "200" must be between 300 and 599'),
        ("server { listen 80; error_page 404 =abc /x; }", 4, 'invalid value "abc"'),
        ("server { listen 80; error_page 404 /$nope; }", 4, 'unknown "nope" variable'),
        ("server { listen 80; expires modified @1h; }", 4, 'daily time cannot be used with "modified"'),
        ("server { listen 80; expires @25h; }", 4, "daily time value must be less than 24 hours"),
        ("server { listen 80; expires later 1h; }", 4, 'invalid value "later" in "expires"'),
        ("server { listen 80; expires soon; }", 4, 'invalid value "soon" in "expires"'),
        ("server { listen 80; if ($uri) { add_header X y; } }", 4, '"add_header" directive is not allowed here'),
        ("server { listen 80; location / { if ($uri) { proxy_pass http://127.0.0.1:1/x; } } }", 4, 'inside "if" statement'),
        ("server { listen 80; rewrite ^/( /x; }", 4, "invalid regular expression"),
        ("server { listen 80; rewrite ^/ /x sometimes; }", 4, 'invalid parameter "sometimes"'),
        ("server { listen 80; if ($uri ?? b) { return 404; } }", 4, 'unexpected "??" in condition'),
        ("server { listen 80; set $x $undefined; }", 4, 'unknown "undefined" variable'),
        ("server { listen 80; root /srv/$host; }", 4, '"root" with variables is not supported'),
        ("server { listen 80; location = /x { location /x/y { } } }", 4, 'cannot be inside the exact location "/x"'),
        ("server { listen 80; location /x { location /y { } } }", 4, 'location "/y" is outside location "/x"'),
        ("server { listen 80; location /x { location @n { } } }", 4, "can be on the server level only"),
        ("server { listen 80; proxy_cookie_path ~( /x; }", 4, "invalid regular expression"),
        ("server { listen 80; proxy_cookie_domain a; }", 4, 'invalid number of arguments in "proxy_cookie_domain"'),
        ("types { text/html html; }\nserver { listen 80; tpyo 1; }", 5, 'unknown directive "tpyo"'),
    ],
)
def test_errors_name_file_line_and_directive(
    tmp_path: Path, body: str, line: int, words: str
) -> None:
    error = error_of(tmp_path, body)
    assert error.file == str(tmp_path / "nginx.conf")
    assert error.line == line
    assert words in str(error)
    assert str(error).endswith(f"{tmp_path / 'nginx.conf'}:{line}")


def test_missing_brace_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "nginx.conf"
    path.write_text("events {}\nhttp {\n server { listen 80;\n}\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert "unexpected end of file" in str(info.value)


def test_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="No such file"):
        load_config(str(tmp_path / "absent.conf"))


def test_global_directives_from_command_line(tmp_path: Path) -> None:
    path = write(tmp_path, "server { listen 80; }")
    config = load_config(
        str(path), global_directives=f"pid {tmp_path}/x.pid; error_log stderr info;"
    )
    assert config.main.pid == f"{tmp_path}/x.pid"
    assert config.main.error_log_level == "info"


def test_issue7_directives_and_their_defaults(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        """
    underscores_in_headers on;
    lingering_close always;
    client_body_buffer_size 8k;
    server { listen 8080; lingering_timeout 2s;
        location / { proxy_pass http://127.0.0.1:1; proxy_buffer_size 16k; } }
    server { listen 8081; location / { proxy_pass http://127.0.0.1:1; } }
""",
    )
    first, second = config.servers
    assert first.limits.underscores_in_headers and first.limits.ignore_invalid_headers
    assert (first.limits.lingering_close, first.limits.lingering_timeout) == ("always", 2.0)
    assert first.limits.lingering_time == 30.0
    assert first.locations[0].proxy.buffer_size == 16 * 1024
    assert first.locations[0].client_body_buffer_size == 8 * 1024
    assert first.locations[0].client_body_temp_path == str(tmp_path / "client_body_temp")
    # http-level settings reach every server; a server-level one only its own
    assert second.limits.underscores_in_headers and second.limits.lingering_close == "always"
    assert second.limits.lingering_timeout == 5.0
    assert second.locations[0].proxy.buffer_size == 4096


def test_lingering_in_a_location_is_refused_not_ignored(tmp_path: Path) -> None:
    error = error_of(
        tmp_path,
        "server { listen 8080; location / { lingering_close off; return 200; } }",
    )
    assert "lingering_close" in str(error) and "http and server blocks only" in str(error)
    assert error_of(tmp_path, "server { listen 8080; lingering_close maybe; }")


def test_weight_over_1000_is_a_config_error(tmp_path: Path) -> None:
    error = error_of(tmp_path, "upstream u { server 127.0.0.1:1 weight=1001; }")
    assert "weight=1000" in str(error)


def test_process_directives_and_their_defaults(tmp_path: Path) -> None:
    default = load(tmp_path, "server { listen 80; }").main
    assert (default.master_process, default.worker_processes) == (True, 1)
    assert default.worker_shutdown_timeout == 0
    path = tmp_path / "nginx.conf"
    path.write_text(
        "worker_processes 3;\nmaster_process off;\nworker_shutdown_timeout 1m30s;\n"
        + BASE.format(body="server { listen 80; }")
    )
    main = load_config(str(path)).main
    assert (main.master_process, main.worker_processes) == (False, 3)
    assert main.worker_shutdown_timeout == 90
    path.write_text("master_process maybe;\n" + BASE.format(body="server { listen 80; }"))
    with pytest.raises(ConfigError, match='"master_process" directive, it must be "on" or "off"'):
        load_config(str(path))


def test_zone_is_accepted_with_a_notice_of_what_it_shares(tmp_path: Path) -> None:
    config = load(tmp_path, "upstream u { zone u 64k; server 127.0.0.1:1; }")
    assert any('"zone" in upstream "u"' in notice for notice in config.notices)


@pytest.mark.parametrize(
    ("directive", "words"),
    [
        ("resolver 127.0.0.1;", "no run-time resolver"),
        ("resolver_timeout 5s;", "no run-time resolver"),
        ("gzip on;", "does not compress"),
        ("charset utf-8;", "charset"),
        ("proxy_ignore_client_abort on;", "proxy_ignore_client_abort on"),
        ("merge_slashes off;", "merge_slashes off"),
    ],
)
def test_a_directive_that_would_change_answers_is_refused_not_ignored(
    tmp_path: Path, directive: str, words: str
) -> None:
    error = error_of(
        tmp_path, "server { listen 80;\n" + directive + "\nlocation / { return 200; } }"
    )
    assert words in str(error)
    assert f'"{directive.split()[0]}" directive' in str(error)
    assert error.file is not None
    lines = Path(error.file).read_text().splitlines()
    assert lines[error.line - 1] == directive


@pytest.mark.parametrize(
    "directive",
    [
        "gzip off;",
        "charset off;",
        "merge_slashes on;",
        "connection_pool_size 1024;",  # nginx's memory pools: nothing a client sees
        "request_pool_size 8k;",
    ],
)
def test_the_same_directives_with_nginx_s_default_are_accepted(
    tmp_path: Path, directive: str
) -> None:
    config = load(tmp_path, "server { listen 80;\n" + directive + "\nlocation / { return 200; } }")
    assert any(directive.split()[0] in notice for notice in config.notices)


def test_server_tokens_is_inherited_and_build_means_on(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        "server_tokens off; server { listen 80; location / { return 200; }"
        " location /b { server_tokens build; return 200; } }",
    )
    first, second = config.servers[0].locations
    assert (first.server_tokens, second.server_tokens) == (False, True)


def test_data_blocks_are_not_taken_for_directives(tmp_path: Path) -> None:
    """`include mime.types` (a `types` block) and a `map` parse: their entries are data."""
    (tmp_path / "mime.types").write_text("types {\n text/html html htm;\n image/png png;\n}\n")
    config = load(
        tmp_path,
        "include mime.types;\nmap $http_upgrade $connection_upgrade { default upgrade; '' close; }"
        '\nserver { listen 80; location / { return 200 "$connection_upgrade"; } }',
    )
    assert set(config.maps) == {"connection_upgrade"}
    chosen, _ = config.maps["connection_upgrade"].choose("")
    assert chosen.text == "close"
