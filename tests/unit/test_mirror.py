"""The master's list changes, applied by a worker's mirror: fed data, no processes."""

import asyncio
import pickle
from pathlib import Path

from upsync.config.model import ServerSpec
from upsync.upstream.mirror import FULL, ListMirror, SentLists
from upsync.wire import FrameReader, frame


def server(port: int, weight: int = 1) -> ServerSpec:
    return ServerSpec(name=f"127.0.0.1:{port}", host="127.0.0.1", port=port, weight=weight)


def over_the_wire(message: object) -> object:
    return FrameReader().feed(frame(message))[0]


def test_first_list_is_whole_then_only_changed_servers_travel() -> None:
    sent, mirror = SentLists(), ListMirror()
    listed = [server(port) for port in range(9000, 9200)]
    first = sent.change("backend", listed)
    assert first.base == FULL and len(first.fresh) == 200
    assert mirror.apply(first) == tuple(listed)

    reweighted = server(9100, weight=5)
    changed = [*listed[:100], reweighted, *listed[101:], server(9999)]
    update = sent.change("backend", changed)
    assert update.base == first.version
    assert update.fresh == (reweighted, server(9999))
    assert len(pickle.dumps(update)) < len(pickle.dumps(first)) // 2
    assert mirror.apply(over_the_wire(update)) == tuple(changed)  # type: ignore[arg-type]


def test_removal_and_reorder_travel_as_names() -> None:
    sent, mirror = SentLists(), ListMirror()
    a, b, c = server(1), server(2), server(3)
    mirror.apply(sent.change("u", [a, b, c]))
    update = sent.change("u", [c, a])
    assert update.fresh == ()
    assert mirror.apply(update) == (c, a)


def test_a_change_to_another_version_asks_for_the_whole_list() -> None:
    sent, mirror = SentLists(), ListMirror()
    sent.change("u", [server(1)])
    missed = sent.change("u", [server(1), server(2)])
    assert mirror.apply(missed) is None  # never saw the first list
    then = sent.change("u", [server(2)])
    assert mirror.apply(then) is None
    whole = sent.whole("u")
    assert whole is not None and whole.base == FULL
    assert mirror.apply(whole) == (server(2),)
    assert mirror.apply(sent.change("u", [server(2), server(3)])) == (server(2), server(3))


def test_upstreams_are_kept_apart() -> None:
    sent, mirror = SentLists(), ListMirror()
    mirror.apply(sent.change("a", [server(1)]))
    mirror.apply(sent.change("b", [server(2)]))
    assert mirror.apply(sent.change("a", [server(1), server(3)])) == (server(1), server(3))
    assert sent.whole("missing") is None


class _Transport:
    def __init__(self) -> None:
        self.sent = b""

    def is_closing(self) -> bool:
        return False

    def write(self, data: bytes) -> None:
        self.sent += data


def test_a_worker_that_cannot_apply_a_change_asks_for_the_whole_list(tmp_path: Path) -> None:
    from upsync.app import App
    from upsync.config import load_config
    from upsync.worker import MasterChannel

    conf = tmp_path / "nginx.conf"
    conf.write_text(
        "events {} http { upstream u { upsync 127.0.0.1:1/v2/keys/u upsync_type=etcd; } }"
    )
    loop = asyncio.new_event_loop()
    try:
        app = App(load_config(str(conf)), loop, inherited={})
        channel, transport = MasterChannel(app), _Transport()
        channel.connection_made(transport)  # type: ignore[arg-type]
        sent = SentLists()
        first = sent.change("u", [server(1)])
        missed = sent.change("u", [server(1), server(2)])
        channel.handle(("list", missed, "registry", {}))
        assert FrameReader().feed(transport.sent) == [("resend", "u")]
        assert [peer.name for peer in app.upstreams.groups["u"].peers] == []
        channel.handle(
            (
                "list",
                first._replace(version=missed.version, base=FULL, fresh=(server(1), server(2))),
                "registry",
                {},
            )
        )
        assert [peer.name for peer in app.upstreams.groups["u"].peers] == [
            "127.0.0.1:1",
            "127.0.0.1:2",
        ]
    finally:
        loop.close()
