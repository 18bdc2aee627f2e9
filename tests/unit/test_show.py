from upsync.admin.show import parse_show_query, show_text
from upsync.config.model import BalanceMethod, ServerSpec, UpstreamConfig
from upsync.upstream.group import UpstreamGroup


def group(name: str, *specs: ServerSpec) -> UpstreamGroup:
    return UpstreamGroup(UpstreamConfig(name=name, servers=specs, method=BalanceMethod()))


def spec(port: int, **kw: object) -> ServerSpec:
    return ServerSpec(name=f"127.0.0.1:{port}", host="127.0.0.1", port=port, **kw)  # type: ignore[arg-type]


def test_text_matches_nginx_upsync_module_byte_for_byte() -> None:
    groups = [
        group(
            "test",
            spec(8089, weight=20, max_fails=0, fail_timeout=30.0),
            spec(8088, weight=10, max_fails=3),
        ),
        group("backend", spec(8090, weight=10, max_fails=3, down=True)),
    ]
    assert show_text(groups) == (
        "Upstream name: test; Backend server count: 2\n"
        "        server 127.0.0.1:8089 weight=20 max_fails=0 fail_timeout=30s;\n"
        "        server 127.0.0.1:8088 weight=10 max_fails=3 fail_timeout=10s;\n"
        "\n"
        "Upstream name: backend; Backend server count: 1\n"
        "        server 127.0.0.1:8090 weight=10 max_fails=3 fail_timeout=10s down;\n"
        "\n"
    )


def test_query_forms() -> None:
    assert parse_show_query("test") == ("test", False)
    assert parse_show_query("format=json") == (None, True)
    assert parse_show_query("test&format=json") == ("test", True)
    assert parse_show_query("") == (None, False)


def test_replace_keeps_state_of_servers_that_stay() -> None:
    g = group("t", spec(1), spec(2))
    kept = g.peers[0]
    kept.fails = 2
    removed = g.peers[1]
    g.replace([spec(1, weight=5), spec(3)])
    assert g.peers[0] is kept and kept.fails == 2 and kept.weight == 5
    assert removed.retired
    assert [p.name for p in g.peers] == ["127.0.0.1:1", "127.0.0.1:3"]
