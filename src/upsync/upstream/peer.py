"""A peer is one upstream server at run time: its settings plus nginx's per-peer state."""

from upsync.config.model import ServerSpec


class Peer:
    """Mutable on purpose: balancers update the counters on every pick, as nginx does."""

    __slots__ = (
        "accessed",
        "backup",
        "checked",
        "conns",
        "current_weight",
        "down",
        "effective_weight",
        "fail_timeout",
        "fails",
        "host",
        "max_conns",
        "max_fails",
        "name",
        "port",
        "retired",
        "weight",
        "written",
    )

    def __init__(self, spec: ServerSpec) -> None:
        self.name = spec.name
        self.host = spec.host
        self.port = spec.port
        self.written = spec.written or spec.name
        self.fails = 0
        self.checked = 0.0
        self.accessed = 0.0
        self.conns = 0
        self.current_weight = 0
        self.retired = False
        self.weight = spec.weight
        self.effective_weight = spec.weight
        self.max_fails = spec.max_fails
        self.fail_timeout = spec.fail_timeout
        self.max_conns = spec.max_conns
        self.backup = spec.backup
        self.down = spec.down

    def update(self, spec: ServerSpec) -> None:
        """New attributes from the registry; the failure counters and connections stay."""
        if spec.weight != self.weight:
            self.effective_weight = spec.weight
            self.current_weight = 0
        self.weight = spec.weight
        self.max_fails = spec.max_fails
        self.fail_timeout = spec.fail_timeout
        self.max_conns = spec.max_conns
        self.backup = spec.backup
        self.down = spec.down
        self.written = spec.written or spec.name

    def spec(self) -> ServerSpec:
        return ServerSpec(
            name=self.name,
            host=self.host,
            port=self.port,
            weight=self.weight,
            max_fails=self.max_fails,
            fail_timeout=self.fail_timeout,
            max_conns=self.max_conns,
            backup=self.backup,
            down=self.down,
            written=self.written,
        )

    def available(self, now: float) -> bool:
        """nginx's test before choosing a peer: not down, not failed recently, under max_conns."""
        if self.down:
            return False
        if (
            self.max_fails
            and self.fails >= self.max_fails
            and now - self.checked <= self.fail_timeout
        ):
            return False
        return not (self.max_conns and self.conns >= self.max_conns)

    def unavailable_until(self, now: float) -> float | None:
        if (
            self.max_fails
            and self.fails >= self.max_fails
            and now - self.checked <= self.fail_timeout
        ):
            return self.checked + self.fail_timeout
        return None

    def __repr__(self) -> str:
        return f"Peer({self.name} w={self.weight} fails={self.fails} conns={self.conns})"
