"""limit_rate and proxy_limit_rate as nginx counts them: `after` bytes, then `rate` bytes a
second, the first second's worth at once. Pure: given the clock, how much may go now, and how
long until a given amount may."""

from upsync.config.model import LocationConfig
from upsync.config.variables import VariableSource
from upsync.units import UnitError, parse_size


class RateLimit:
    __slots__ = ("after", "rate", "sent", "start")

    def __init__(self, rate: int, after: int, start: float) -> None:
        self.rate = rate
        self.after = after
        self.start = start
        self.sent = 0

    def allowance(self, now: float) -> int:
        """Bytes that may go now (nginx: rate * (seconds since the start + 1) - sent)."""
        return self.after + int(self.rate * (now - self.start + 1)) - self.sent

    def wait_for(self, size: int, now: float) -> float:
        """Seconds until `size` more bytes may go (0 when they may now)."""
        due = (self.sent + size - self.after) / self.rate - 1
        return max(0.0, due - (now - self.start))


def client_rate(location: LocationConfig, source: VariableSource, assigned: str | None) -> int:
    """The request's limit_rate in bytes a second (0: none): `set $limit_rate` when it was,
    else the location's; a value that is not a size is no limit, as in nginx."""
    if assigned is None:
        if location.limit_rate is None:
            return 0
        assigned = location.limit_rate.render(source)
    try:
        return parse_size(assigned.strip())
    except UnitError:
        return 0


def limit_for(
    location: LocationConfig, upstream_rate: int, rate: int, start: float
) -> RateLimit | None:
    """The tighter of the client's limit_rate (after limit_rate_after) and proxy_limit_rate."""
    if rate and (not upstream_rate or rate <= upstream_rate):
        return RateLimit(rate, location.limit_rate_after, start)
    if upstream_rate:
        return RateLimit(upstream_rate, 0, start)
    return None
