"""The master ↔ worker messages: frames split or merged by reads, and the configuration model
carried whole (the compiled build cannot unpickle frozen dataclasses the generic way)."""

import dataclasses
from pathlib import Path

import pytest
import regex

from upsync.config import load_config
from upsync.config.model import ServerSpec
from upsync.wire import HEADER, FrameReader, frame


def test_frames_split_across_reads_and_merged_in_one() -> None:
    data = frame(("list", "a", (1, 2))) + frame(("quit", 1.0))
    reader = FrameReader()
    got: list[object] = []
    for index in range(0, len(data), 3):
        got.extend(reader.feed(data[index : index + 3]))
    assert got == [("list", "a", (1, 2)), ("quit", 1.0)]
    assert FrameReader().feed(data) == got


def test_an_oversized_frame_is_refused() -> None:
    with pytest.raises(ValueError, match="frame of"):
        FrameReader().feed(HEADER.pack(1 << 31))


def comparable(value: object) -> object:
    """The model as plain values: compiled regexes (the `regex` package's) compare by
    identity, so each stands as its pattern and flags."""
    if isinstance(value, regex.Pattern):
        return ("regex", value.pattern, value.flags)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = dataclasses.fields(value)
        return (type(value).__name__, tuple(comparable(getattr(value, f.name)) for f in fields))
    if isinstance(value, (tuple, list)):
        return tuple(comparable(item) for item in value)
    if isinstance(value, (set, frozenset)):
        return frozenset(comparable(item) for item in value)
    if isinstance(value, dict):
        return {key: comparable(item) for key, item in value.items()}
    return value


def test_the_configuration_model_survives_the_trip(tmp_path: Path) -> None:
    path = tmp_path / "nginx.conf"
    path.write_text(
        """
events {}
http {
    upstream u { server 127.0.0.1:1 weight=3; hash $request_uri consistent; }
    server {
        listen 127.0.0.1:8080;
        server_name ~^(www\\.)?example\\.com$;
        location ~* \\.php$ { proxy_pass http://u; proxy_set_header X-Uri $uri; }
        location /show { upstream_show; }
    }
}
"""
    )
    config = load_config(str(path))
    (copy,) = FrameReader().feed(frame(config))
    assert comparable(copy) == comparable(config)
    location = config.servers[0].locations[0]
    assert comparable(location.regex) == ("regex", "\\.php$", location.regex.flags)
    servers = copy.upstreams["u"].servers  # type: ignore[attr-defined]
    assert isinstance(servers[0], ServerSpec) and servers[0].weight == 3
