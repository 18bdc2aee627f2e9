"""The master ↔ worker messages: frames split or merged by reads, and the configuration model
carried whole (the compiled build cannot unpickle frozen dataclasses the generic way)."""

from pathlib import Path

import pytest

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
    # compiled regexes (the `regex` package's) compare by identity, so the model is compared
    # by its text, which shows each pattern and its flags
    assert repr(copy) == repr(config)
    assert 'regex.Regex(\'\\\\.php$\', flags=regex.I | regex.V0)' in repr(copy)
    servers = copy.upstreams["u"].servers  # type: ignore[attr-defined]
    assert isinstance(servers[0], ServerSpec) and servers[0].weight == 3
