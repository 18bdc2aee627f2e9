"""nginx's time and size notations ("1h 30m", "500ms", "8k"), parsed the way nginx does."""

import re

_TIME_UNITS = {
    "ms": 0.001,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,
    "w": 7 * 86400.0,
    "M": 30 * 86400.0,
    "y": 365 * 86400.0,
}
_TIME_PART = re.compile(r"(\d+)(ms|s|m|h|d|w|M|y)?")
_SIZE = re.compile(r"(\d+)([kKmMgG]?)")
_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


class UnitError(ValueError):
    """A value that is not in nginx's time or size notation."""


def parse_time(text: str) -> float:
    """Seconds for an nginx time value; a bare number means seconds."""
    parts = text.split()
    if not parts:
        raise UnitError(f'invalid time value "{text}"')
    total = 0.0
    for part in parts:
        pos = 0
        while pos < len(part):
            match = _TIME_PART.match(part, pos)
            if match is None:
                raise UnitError(f'invalid time value "{text}"')
            total += int(match.group(1)) * _TIME_UNITS[match.group(2) or "s"]
            pos = match.end()
    return total


def parse_size(text: str) -> int:
    """Bytes for an nginx size value ("8k", "1m", "512")."""
    match = _SIZE.fullmatch(text)
    if match is None:
        raise UnitError(f'invalid size value "{text}"')
    return int(match.group(1)) * _SIZE_UNITS[match.group(2).lower()]


def format_seconds(seconds: float) -> str:
    """nginx-upsync-module prints fail_timeout in whole seconds: "10s"."""
    return f"{int(seconds)}s"
