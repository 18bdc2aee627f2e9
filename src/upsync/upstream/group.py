"""One upstream at run time: its peers, its balancer and its keep-alive pool.

The server list is replaceable while requests flow: `replace()` keeps the Peer objects (and so the
failure counters and pooled connections) of servers that stay, and builds a new balancer. A request
holds the Peer it was given, so a removed server finishes its in-flight requests untouched.
"""

import random
from collections.abc import Sequence
from typing import TYPE_CHECKING

from upsync.config.model import ServerSpec, UpstreamConfig
from upsync.upstream.balancer import Balancer, make_balancer
from upsync.upstream.peer import Peer
from upsync.upstream.pool import KeepalivePool

if TYPE_CHECKING:
    from upsync.upstream.sync import UpstreamSync


class UpstreamGroup:
    def __init__(self, config: UpstreamConfig, rng: random.Random | None = None) -> None:
        self.name = config.name
        self.config = config
        self.rng = rng
        self.pool = KeepalivePool(
            config.keepalive,
            config.keepalive_timeout,
            config.keepalive_requests,
            config.keepalive_time,
        )
        self.peers: list[Peer] = []
        self._peers: dict[str, Peer] = {}
        self._specs: dict[str, ServerSpec] = {}
        self.balancer: Balancer = make_balancer("round_robin", [])
        self.source = "static"
        self.sync: UpstreamSync | None = None
        # in a worker, the registry state of the master's sync, as last reported
        self.reported_status: dict[str, object] | None = None
        self.replace(config.servers)

    def reconfigure(self, config: UpstreamConfig) -> None:
        """A reload with the same balancing method: new keep-alive settings, same peers."""
        self.config = config
        self.pool.max_age = config.keepalive_time
        self.pool.capacity = config.keepalive
        self.pool.timeout = config.keepalive_timeout
        self.pool.max_requests = config.keepalive_requests

    def _build_balancer(self, peers: Sequence[Peer]) -> Balancer:
        method = self.config.method
        return make_balancer(
            method.kind,
            peers,
            consistent=method.consistent,
            two=method.two,
            rng=self.rng,
            previous=self.balancer,
        )

    def replace(self, specs: Sequence[ServerSpec], new_first: bool = False) -> bool:
        """Install a new list; False when it is the list already in place.

        With `new_first`, servers not in the list before go in front of the ones that stay,
        the order nginx-upsync-module shows them in. The common registry change (one server's
        attributes among many) updates that peer in place: unchanged entries are recognised by
        identity, as the entry parser hands back the same object for the same key and value.
        """
        known = self._specs
        if len(specs) == len(known):
            changed: list[ServerSpec] = []
            for spec in specs:
                old = known.get(spec.name)
                if old is spec:
                    continue
                if old is None:
                    break
                if old != spec:
                    changed.append(spec)
                known[spec.name] = spec
            else:
                if not changed:
                    return False
                for spec in changed:
                    self._peers[spec.name].update(spec)
                self.balancer = self._build_balancer(self.peers)
                return True
        current = dict(self._peers)
        added: list[Peer] = []
        kept: list[Peer] = []
        for spec in specs:
            peer = current.pop(spec.name, None)
            if peer is None:
                added.append(Peer(spec))
            else:
                peer.update(spec)
                kept.append(peer)
        if new_first:
            order = {peer.name: index for index, peer in enumerate(self.peers)}
            kept.sort(key=lambda peer: order[peer.name])
            peers = added + kept
        else:
            position = {spec.name: index for index, spec in enumerate(specs)}
            peers = sorted(added + kept, key=lambda peer: position[peer.name])
        for removed in current.values():
            removed.retired = True
            self.pool.close_peer(removed)
        self.peers = peers
        self._peers = {peer.name: peer for peer in peers}
        self._specs = {spec.name: spec for spec in specs}
        self.balancer = self._build_balancer(peers)
        return True

    def specs(self) -> list[ServerSpec]:
        """The list in place, as the objects it was installed from (the master sends a worker
        only the ones that are not the objects it sent before)."""
        return [self._specs[peer.name] for peer in self.peers]

    def spec_of(self, name: str) -> ServerSpec:
        return self._specs[name]

    def status(self) -> dict[str, object]:
        """What upstream_show's JSON adds per upstream: where the list came from, and the
        registry's state for a synced upstream."""
        status: dict[str, object] = {"source": self.source}
        if self.sync is not None:
            status.update(self.sync.status())
        elif self.reported_status is not None:
            status.update(self.reported_status)
        return status
