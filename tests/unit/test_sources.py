"""Registry answers into snapshots (recorded answers, no network), and how a snapshot is applied."""

import base64
import json

import pytest

from upsync.config.model import BalanceMethod, ServerSpec, UpstreamConfig, UpsyncDirectives
from upsync.config.upsync import UpsyncError, apply_upsync_lb, parse_upsync
from upsync.config.variables import compile_template
from upsync.sources.base import RegistryError
from upsync.sources.consul import next_index, parse_catalog, parse_health, parse_kv
from upsync.sources.entries import (
    EntryParser,
    parse_entry,
    read_server_lines,
    snapshot_from_kv,
    snapshot_from_server_lines,
    spec_from_json,
)
from upsync.sources.etcd_v2 import parse_directory
from upsync.sources.etcd_v3 import prefix_range
from upsync.upstream.group import UpstreamGroup
from upsync.upstream.sync import RetryPace, UpstreamSync, backoff


def test_empty_value_means_module_defaults() -> None:
    spec = spec_from_json("127.0.0.1", 8001, "")
    assert (spec.weight, spec.max_fails, spec.fail_timeout, spec.down, spec.backup) == (
        1,
        2,
        10.0,
        False,
        False,
    )


def test_partial_value_and_unknown_fields() -> None:
    spec = spec_from_json(
        "127.0.0.1", 8001, '{"server": "120.0.0.1:8002", "weight": 40, "down": 1}'
    )
    assert (spec.weight, spec.max_fails, spec.down) == (40, 2, True)


@pytest.mark.parametrize(
    "value",
    [
        "{not json",
        "[1, 2]",
        '{"weight": 0}',
        '{"weight": -3}',
        '{"max_fails": -1}',
        '{"weight": "x"}',
        '{"fail_timeout": -5}',
    ],
)
def test_bad_values_are_rejected(value: str) -> None:
    with pytest.raises(ValueError):
        spec_from_json("127.0.0.1", 8001, value)


def test_snapshot_names_bad_keys_and_values() -> None:
    snap = snapshot_from_kv(
        [
            ("127.0.0.1:8001", b'{"weight":2}'),
            ("[::1]:8002", b""),
            ("not-an-address", b"{}"),
            ("127.0.0.1", b"{}"),
            ("127.0.0.1:8003", b"{oops"),
        ]
    )
    assert [s.name for s in snap.servers] == ["127.0.0.1:8001", "[::1]:8002"]
    assert {b.key: b.name for b in snap.bad} == {
        "not-an-address": None,
        "127.0.0.1": None,
        "127.0.0.1:8003": "127.0.0.1:8003",
    }


def test_entry_parser_hands_back_the_same_object_for_the_same_entry() -> None:
    parser = EntryParser()
    first = parser.snapshot([("127.0.0.1:1", b"{}"), ("127.0.0.1:2", b"{}")])
    second = parser.snapshot([("127.0.0.1:1", b"{}"), ("127.0.0.1:2", b'{"weight":3}')])
    assert second.servers[0] is first.servers[0]
    assert second.servers[1].weight == 3


ETCD_V2_DIRECTORY = json.dumps(
    {
        "action": "get",
        "node": {
            "key": "/upstreams",
            "dir": True,
            "nodes": [
                {
                    "key": "/upstreams/127.0.0.1:8001",
                    "value": '{"server": "127.0.0.1:8001"}',
                    "modifiedIndex": 4,
                },
                {
                    "key": "/upstreams/127.0.0.1:8002",
                    "value": '{"server": "120.0.0.1:8002"}',
                    "modifiedIndex": 5,
                },
                {"key": "/upstreams/sub", "dir": True},
            ],
        },
    }
).encode()


def test_etcd_v2_directory_answer_from_the_seed() -> None:
    snap = parse_directory(ETCD_V2_DIRECTORY, 200, "5")
    assert [s.name for s in snap.servers] == ["127.0.0.1:8001", "127.0.0.1:8002"]
    assert snap.index == "5"
    assert [b.key for b in snap.bad] == ["sub/"]


def test_etcd_v2_missing_directory_is_an_empty_list() -> None:
    body = b'{"errorCode":100,"message":"Key not found","cause":"/upstreams","index":7}'
    assert parse_directory(body, 404, "7").servers == ()


def test_etcd_v2_errors() -> None:
    with pytest.raises(RegistryError):
        parse_directory(b"<html>", 200, "1")
    with pytest.raises(RegistryError):
        parse_directory(b'{"node": {"key": "/x", "value": "1"}}', 200, "1")


def test_etcd_v3_prefix_range() -> None:
    key, end = prefix_range("upstreams/test/")
    assert base64.b64decode(key) == b"upstreams/test/"
    assert base64.b64decode(end) == b"upstreams/test0"  # "/" + 1


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_consul_kv_answer() -> None:
    body = json.dumps(
        [
            {"Key": "upstreams/test/", "Value": None, "ModifyIndex": 3},
            {
                "Key": "upstreams/test/127.0.0.1:8001",
                "Value": _b64('{"weight":3}'),
                "ModifyIndex": 4,
            },
            {"Key": "upstreams/test/127.0.0.1:8002", "Value": None, "ModifyIndex": 5},
            {"Key": "upstreams/test2/127.0.0.1:9", "Value": None, "ModifyIndex": 6},
        ]
    ).encode()
    snap = parse_kv(body, 200, "upstreams/test/", "6")
    assert [(s.name, s.weight) for s in snap.servers] == [
        ("127.0.0.1:8001", 3),
        ("127.0.0.1:8002", 1),
    ]
    assert parse_kv(b"", 404, "upstreams/test/", "6").servers == ()


def test_consul_catalog_and_health_answers() -> None:
    catalog = json.dumps(
        [
            {
                "Address": "10.0.0.1",
                "ServiceAddress": "",
                "ServicePort": 80,
                "ServiceTags": ["weight=2", "backup"],
                "ServiceID": "a",
            },
            {
                "Address": "10.0.0.9",
                "ServiceAddress": "10.0.0.2",
                "ServicePort": 81,
                "ServiceTags": [],
                "ServiceID": "b",
            },
            {"Address": "10.0.0.3", "ServicePort": None, "ServiceID": "broken"},
        ]
    ).encode()
    snap = parse_catalog(catalog, 200, "9")
    assert [(s.name, s.weight, s.backup) for s in snap.servers] == [
        ("10.0.0.1:80", 2, True),
        ("10.0.0.2:81", 1, False),
    ]
    assert [b.key for b in snap.bad] == ["broken"]
    health = json.dumps(
        [
            {
                "Node": {"Address": "10.0.0.1"},
                "Service": {"Address": "", "Port": 80, "Tags": []},
                "Checks": [{"Status": "passing"}, {"Status": "critical"}],
            },
            {
                "Node": {"Address": "10.0.0.2"},
                "Service": {"Address": "", "Port": 80, "Tags": []},
                "Checks": [{"Status": "warning"}],
            },
        ]
    ).encode()
    assert [(s.name, s.down) for s in parse_health(health, 200, "1").servers] == [
        ("10.0.0.1:80", True),
        ("10.0.0.2:80", False),
    ]


@pytest.mark.parametrize(
    ("previous", "header", "expected"),
    [(0, "5", 5), (5, "5", 5), (5, "9", 9), (9, "3", 0), (0, "0", 1), (3, None, 0), (3, "junk", 0)],
)
def test_consul_index_rules(previous: int, header: str | None, expected: int) -> None:
    assert next_index(previous, header) == expected


def test_dump_lines_parse_back() -> None:
    snap = snapshot_from_server_lines(
        "server 127.0.0.1:8088 weight=40 max_fails=3 fail_timeout=20s down;\n# c\nserver bad\n",
        "dump",
    )
    assert [(s.name, s.weight, s.max_fails, s.fail_timeout, s.down) for s in snap.servers] == [
        ("127.0.0.1:8088", 40, 3, 20.0, True)
    ]
    assert len(snap.bad) == 1


def test_upsync_directive() -> None:
    spec = parse_upsync(
        (
            "10.0.0.1:8500,10.0.0.2:8500/v1/kv/upstreams/test",
            "upsync_type=consul",
            "upsync_interval=500ms",
            "upsync_timeout=6m",
            "strong_dependency=on",
            "upsync_token=t",
        ),
        None,
        "test",
    )
    assert [str(e) for e in spec.endpoints] == ["10.0.0.1:8500", "10.0.0.2:8500"]
    assert (spec.path, spec.interval, spec.timeout, spec.strong_dependency, spec.token) == (
        "/v1/kv/upstreams/test",
        0.5,
        360.0,
        True,
        "t",
    )
    assert spec.dump_path == "/tmp/servers_test.conf"  # the module's default
    etcd = parse_upsync(("user:pw@127.0.0.1:2379/v2/keys/upstreams/",), "/x.conf", "t")
    assert etcd.kind == "consul" and (etcd.username, etcd.password) == ("user", "pw")
    tls = parse_upsync(
        (
            "127.0.0.1:8501/v1/kv/x",
            "upsync_ssl_certificate=/c.pem",
            "upsync_ssl_certificate_key=/k.pem",
        ),
        None,
        "t",
    )
    assert tls.scheme == "https"


@pytest.mark.parametrize(
    "args",
    [
        ("127.0.0.1:2379",),
        ("127.0.0.1/v2/keys/x",),
        ("127.0.0.1:2379/x", "upsync_type=zookeeper"),
        ("127.0.0.1:2379/x", "upsync_interval=soon"),
        ("127.0.0.1:2379/x", "strong_dependency=yes"),
        ("127.0.0.1:2379/x", "bogus=1"),
    ],
)
def test_upsync_directive_errors(args: tuple[str, ...]) -> None:
    with pytest.raises(UpsyncError):
        parse_upsync(args, None, "t")


def test_upsync_lb() -> None:
    hashed = BalanceMethod("hash", key=compile_template("$request_uri"))
    assert apply_upsync_lb(hashed, UpsyncDirectives(lb="hash_ketama")).consistent
    assert apply_upsync_lb(BalanceMethod(), UpsyncDirectives(lb="least_conn")).kind == "least_conn"
    with pytest.raises(UpsyncError):
        apply_upsync_lb(BalanceMethod(), UpsyncDirectives(lb="hash_ketama"))


def test_backoff_is_capped() -> None:
    assert [backoff(0.5, n) for n in range(1, 7)] == [0.5, 1, 2, 4, 8, 10]
    assert backoff(30, 5) == 30


def spec(port: int, **kw: object) -> ServerSpec:
    return ServerSpec(name=f"127.0.0.1:{port}", host="127.0.0.1", port=port, **kw)  # type: ignore[arg-type]


def make_sync(*servers: ServerSpec) -> UpstreamSync:
    group = UpstreamGroup(UpstreamConfig("t", servers, BalanceMethod()))
    sync = UpstreamSync(
        group, parse_upsync(("127.0.0.1:2379/x/", "upsync_type=etcdv3"), "/tmp/d", "t")
    )
    sync._schedule_dump = lambda: None  # type: ignore[method-assign]
    return sync


def test_apply_replaces_static_list_and_puts_new_servers_first() -> None:
    sync = make_sync(spec(9))
    parser = EntryParser()
    sync.apply(parser.snapshot([("127.0.0.1:8089", b"")]))
    assert [p.name for p in sync.group.peers] == ["127.0.0.1:8089"]
    sync.apply(parser.snapshot([("127.0.0.1:8088", b""), ("127.0.0.1:8089", b"")]))
    assert [p.name for p in sync.group.peers] == ["127.0.0.1:8088", "127.0.0.1:8089"]
    assert sync.group.source == "registry"


def test_apply_refuses_an_empty_list_and_keeps_state() -> None:
    sync = make_sync()
    parser = EntryParser()
    sync.apply(parser.snapshot([("127.0.0.1:1", b"")]))
    peer = sync.group.peers[0]
    peer.fails = 1
    sync.apply(parser.snapshot([]))
    assert sync.group.peers == [peer] and peer.fails == 1


def test_bad_value_for_known_server_keeps_last_good_attributes() -> None:
    sync = make_sync()
    parser = EntryParser()
    sync.apply(parser.snapshot([("127.0.0.1:1", b'{"down":1}'), ("127.0.0.1:2", b"")]))
    sync.apply(
        parser.snapshot([("127.0.0.1:1", b"{broken"), ("127.0.0.1:2", b""), ("127.0.0.1:3", b"{x")])
    )
    assert [(p.name, p.down) for p in sync.group.peers] == [
        ("127.0.0.1:1", True),
        ("127.0.0.1:2", False),
    ]


def test_retry_pace_starts_over_once_the_registry_answers() -> None:
    pace = RetryPace(0.5)
    assert [pace.failed() for _ in range(5)] == [0.5, 1, 2, 4, 8]
    pace.answered()
    assert pace.failed() == 0.5  # a new outage waits as little as the first did


@pytest.mark.parametrize(
    "key",
    [
        "[fe80::1%eth0\nserver 6.6.6.6:80]:80",  # a zone id carrying a line
        "[fe80::1%eth0]:80",
        "a;b:80",
        "127.0.0.1:\u0662\u0667\u0661\u0664\u0663",  # non-ASCII digits
        "host\tname:80",
        "caf\u00e9.example:80",
    ],
)
def test_registry_keys_nginx_would_not_take_are_bad_entries(key: str) -> None:
    assert not isinstance(parse_entry(key, b""), ServerSpec)


def test_file_source_byte_that_is_not_utf8_spoils_its_line_only() -> None:
    data = (
        b"# r\xe9sum\xe9 of the servers (Latin-1 comment)\n"
        b"server 127.0.0.1:8001;\n"
        b"server 127.0.0.1:8002 weight=2; # caf\xe9\n"
        b"server 127.0.0.1:80\xff3;\n"
    )
    snapshot = read_server_lines(data, "/etc/servers.conf")
    assert [s.name for s in snapshot.servers] == ["127.0.0.1:8001", "127.0.0.1:8002"]
    assert [b.key for b in snapshot.bad] == ["/etc/servers.conf:4"]


def test_file_source_malformed_line_keeps_the_server_as_it_was() -> None:
    sync = make_sync()
    sync.apply(
        read_server_lines(b"server 127.0.0.1:1 weight=5;\nserver 127.0.0.1:2;\n", "f")
    )
    for broken in (b"server 127.0.0.1:1 weight=", b"server 127.0.0.1:1 weight=0;"):
        sync.apply(read_server_lines(broken + b"\nserver 127.0.0.1:2;\n", "f"))
        assert [(p.name, p.weight) for p in sync.group.peers] == [
            ("127.0.0.1:1", 5),
            ("127.0.0.1:2", 1),
        ]


def test_weight_over_the_limit_is_a_bad_entry_and_a_config_error() -> None:
    assert isinstance(parse_entry("127.0.0.1:1", b'{"weight":1000}'), ServerSpec)
    bad = parse_entry("127.0.0.1:1", b'{"weight":20000}')
    assert not isinstance(bad, ServerSpec) and "at most 1000" in bad.reason
    snapshot = read_server_lines(b"server 127.0.0.1:1 weight=20000;\n", "f")
    assert not snapshot.servers and "limit of weight=1000" in snapshot.bad[0].reason
