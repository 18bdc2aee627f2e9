"""One upstream at run time: its peers, its balancer and its keep-alive pool.

The server list is replaceable while requests flow: `replace()` keeps the Peer objects (and so the
failure counters and pooled connections) of servers that stay, and builds a new balancer. A request
holds the Peer it was given, so a removed server finishes its in-flight requests untouched.
"""

import random
from collections.abc import Sequence

from upsync.config.model import ServerSpec, UpstreamConfig
from upsync.upstream.balancer import Balancer, make_balancer
from upsync.upstream.peer import Peer
from upsync.upstream.pool import KeepalivePool


class UpstreamGroup:
    def __init__(self, config: UpstreamConfig, rng: random.Random | None = None) -> None:
        self.name = config.name
        self.config = config
        self.rng = rng
        self.pool = KeepalivePool(
            config.keepalive, config.keepalive_timeout, config.keepalive_requests
        )
        self.peers: list[Peer] = []
        self.balancer: Balancer = make_balancer("round_robin", [])
        self.source = "static"
        self.replace(config.servers)

    def _build_balancer(self, peers: Sequence[Peer]) -> Balancer:
        method = self.config.method
        return make_balancer(
            method.kind, peers, consistent=method.consistent, two=method.two, rng=self.rng
        )

    def replace(self, specs: Sequence[ServerSpec]) -> None:
        current = {peer.name: peer for peer in self.peers}
        peers: list[Peer] = []
        for spec in specs:
            peer = current.pop(spec.name, None)
            if peer is None:
                peer = Peer(spec)
            else:
                peer.update(spec)
            peers.append(peer)
        for removed in current.values():
            removed.retired = True
            self.pool.close_peer(removed)
        self.peers = peers
        self.balancer = self._build_balancer(peers)

    def specs(self) -> list[ServerSpec]:
        return [peer.spec() for peer in self.peers]

    def status(self) -> dict[str, object]:
        """What upstream_show's JSON adds per upstream; registry sources extend it."""
        return {"source": self.source}
