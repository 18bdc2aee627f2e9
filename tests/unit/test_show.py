from upsync.admin.show import parse_show_query, show_answer, show_text
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
    assert parse_show_query("test") == (["test"], False)
    assert parse_show_query("format=json") == ([], True)
    assert parse_show_query("test&format=json") == (["test"], True)
    assert parse_show_query("") == ([], False)
    assert parse_show_query("a&b") == (["a", "b"], False)


def test_errors_never_echo_the_query_and_follow_the_format() -> None:
    groups = [group("t", spec(1))]
    status, kind, body = show_answer(groups, "<script>x</script>", None, 0.0)
    assert (status, kind, body) == (404, b"text/plain", b"upstream not found\n")
    status, kind, body = show_answer(groups, "nope", b"application/json", 0.0)
    assert (status, kind, body) == (404, b"application/json", b'{"error":"upstream not found"}')
    assert show_answer(groups, "a&b", None, 0.0)[0] == 400
    assert show_answer(groups, "t", None, 0.0)[0] == 200


def test_replace_keeps_state_of_servers_that_stay() -> None:
    g = group("t", spec(1), spec(2))
    kept = g.peers[0]
    kept.fails = 2
    removed = g.peers[1]
    g.replace([spec(1, weight=5), spec(3)])
    assert g.peers[0] is kept and kept.fails == 2 and kept.weight == 5
    assert removed.retired
    assert [p.name for p in g.peers] == ["127.0.0.1:1", "127.0.0.1:3"]
