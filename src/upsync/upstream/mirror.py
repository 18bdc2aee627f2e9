"""A synced server list as the master sends it to its workers: as a change against the list it
sent before, so a registry change of one server among hundreds costs each worker one server to
unpickle and the master one to pickle, not the whole list.

Each list the master sends has a version; a change names the version it applies to (`base`).
A worker that holds another version (it cannot, over one ordered stream, but a bug or a new
kind of reload must not route to a wrong list) asks for the whole list instead. No I/O here."""

from typing import NamedTuple

from upsync.config.model import ServerSpec

FULL = 0  # the base of an update that carries every server


class ListUpdate(NamedTuple):
    upstream: str
    version: int
    base: int
    names: tuple[str, ...]  # the list's order
    fresh: tuple[ServerSpec, ...]  # the servers the base does not hold as they are now


class SentLists:
    """The master's record of what it last sent of each upstream."""

    def __init__(self) -> None:
        self.versions: dict[str, int] = {}
        self.lists: dict[str, dict[str, ServerSpec]] = {}

    def change(self, upstream: str, specs: list[ServerSpec]) -> ListUpdate:
        previous = self.lists.get(upstream)
        version = self.versions.get(upstream, 0) + 1
        if previous is None:
            update = ListUpdate(upstream, version, FULL, (), tuple(specs))
        else:
            fresh = tuple(spec for spec in specs if previous.get(spec.name) is not spec)
            names = tuple(spec.name for spec in specs)
            update = ListUpdate(upstream, version, self.versions[upstream], names, fresh)
        self.versions[upstream] = version
        self.lists[upstream] = {spec.name: spec for spec in specs}
        return update

    def whole(self, upstream: str) -> ListUpdate | None:
        """The last list sent, complete: for a worker that starts or has lost track."""
        specs = self.lists.get(upstream)
        if specs is None:
            return None
        return ListUpdate(upstream, self.versions[upstream], FULL, (), tuple(specs.values()))


class ListMirror:
    """A worker's copy of the lists the master sent, to apply the next change to."""

    def __init__(self) -> None:
        self.versions: dict[str, int] = {}
        self.lists: dict[str, dict[str, ServerSpec]] = {}

    def apply(self, update: ListUpdate) -> tuple[ServerSpec, ...] | None:
        """The complete list after `update`, in order; None when it does not apply to the list
        held (the whole list must be asked for)."""
        if update.base == FULL:
            specs = update.fresh
        else:
            held = self.lists.get(update.upstream)
            if held is None or self.versions.get(update.upstream) != update.base:
                return None
            fresh = {spec.name: spec for spec in update.fresh}
            try:
                specs = tuple(fresh.get(name) or held[name] for name in update.names)
            except KeyError:
                return None
        self.versions[update.upstream] = update.version
        self.lists[update.upstream] = {spec.name: spec for spec in specs}
        return specs
