"""`expires [modified] TIME | @TIME_OF_DAY | epoch | max | off`, as nginx's headers filter reads
it: at load time, or per response when the value has variables (a value that does not parse
then leaves the response's headers alone)."""

from dataclasses import dataclass
from typing import Literal

from upsync.config.variables import Template
from upsync.units import UnitError, parse_time

ExpiresKind = Literal["epoch", "max", "off", "access", "modified", "daily"]
DAY = 24 * 60 * 60


class ExpiresError(ValueError):
    """A value nginx's expires does not take; the text is nginx's."""


@dataclass(frozen=True, slots=True)
class Expires:
    kind: ExpiresKind
    # access, modified: seconds after the response's or the file's time (negative: before);
    # daily: the time of day, in seconds after midnight
    seconds: int = 0
    value: Template | None = None  # a value with variables, read per response


def parse_expires(text: str, modified: bool) -> Expires:
    """One value; `modified`: it follows the "modified" parameter (a time only)."""
    if not modified and text in ("epoch", "max", "off"):
        return Expires(text)  # type: ignore[arg-type]
    kind: ExpiresKind = "modified" if modified else "access"
    sign = 1
    if text.startswith("@"):
        if modified:
            raise ExpiresError('daily time cannot be used with "modified" parameter')
        kind, text = "daily", text[1:]
    elif text.startswith(("+", "-")):
        sign, text = (-1 if text[0] == "-" else 1), text[1:]
    try:
        seconds = int(parse_time(text)) if text and "ms" not in text else -1
    except UnitError:
        seconds = -1
    if seconds < 0:
        raise ExpiresError("invalid value")
    if kind == "daily" and seconds > DAY:
        raise ExpiresError("daily time value must be less than 24 hours")
    return Expires(kind, sign * seconds)
