"""An upstream's X-Accel-Redirect and X-Accel-Limit-Rate, as nginx reads them. Pure."""

from typing import Final
from urllib.parse import unquote_to_bytes

from upsync.units import UnitError, parse_size

# the upstream's headers an X-Accel-Redirect answer keeps (nginx's "redirect" flag)
KEPT_ON_REDIRECT: Final = (
    b"content-type:",
    b"set-cookie:",
    b"content-disposition:",
    b"cache-control:",
    b"expires:",
    b"accept-ranges:",
)


def accel_value(lines: list[bytes], name: bytes) -> str | None:
    """The value of X-Accel-NAME (lower case, with the colon) among the lines, or None."""
    for line in lines:
        if line[: len(name)].lower() == name:
            return line[len(name) :].strip().decode("latin-1")
    return None


def _unsafe(path: str) -> bool:
    return (
        path == ".."
        or path.startswith("../")
        or "/../" in path
        or path.endswith("/..")
        or "\x00" in path
    )


def redirect_target(value: str) -> tuple[str, str] | None:
    """An X-Accel-Redirect URI as nginx's ngx_http_parse_unsafe_uri takes it: its path
    (percent-decoded) and arguments, or None when it is unsafe (a ".." segment, before or after
    decoding; nginx answers 404)."""
    if not value or value.startswith("?"):
        return None
    path, _, args = value.partition("?")
    if _unsafe(path):
        return None
    if "%" in path:
        path = unquote_to_bytes(path.encode("latin-1")).decode("latin-1")
        if _unsafe(path):
            return None
    return path, args


def limit_rate_value(value: str) -> int | None:
    """X-Accel-Limit-Rate: bytes a second, 0 for "off"; None when it is neither."""
    if value.lower() == "off":
        return 0
    try:
        return parse_size(value)
    except UnitError:
        return None


def kept_on_redirect(lines: list[bytes]) -> list[bytes]:
    return [line for line in lines if line[:20].lower().startswith(KEPT_ON_REDIRECT)]
