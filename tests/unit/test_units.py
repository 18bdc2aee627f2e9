import pytest

from upsync.units import UnitError, format_seconds, parse_size, parse_time


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("10", 10),
        ("10s", 10),
        ("500ms", 0.5),
        ("6m", 360),
        ("1h 30m", 5400),
        ("1h30m", 5400),
        ("2d", 172800),
    ],
)
def test_parse_time(text: str, seconds: float) -> None:
    assert parse_time(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "abc", "10x", "-1s", "1.5s"])
def test_parse_time_rejects(text: str) -> None:
    with pytest.raises(UnitError):
        parse_time(text)


@pytest.mark.parametrize(
    ("text", "size"),
    [("512", 512), ("8k", 8192), ("1m", 1048576), ("1M", 1048576), ("2g", 2 << 30)],
)
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


def test_format_seconds_is_whole_seconds() -> None:
    assert format_seconds(10.0) == "10s"
