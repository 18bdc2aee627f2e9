"""nginx's load-balancing methods as plain objects: no sockets, no clock (the time is passed in).

Each follows the corresponding ngx_http_upstream_*_module: the same choices for the same events,
so tests can replay nginx's documented sequences. A pick marks nothing but nginx's `checked`
time; the caller counts the connection and reports the outcome through `release`.
"""

import bisect
import functools
import ipaddress
import random
import struct
import zlib
from collections.abc import Sequence

from upsync.upstream.peer import Peer

# nginx gives up hashing after 20 collisions with unusable peers and falls back to round robin.
MAX_HASH_TRIES = 20


def release(peer: Peer, failed: bool, now: float) -> None:
    """nginx's ngx_http_upstream_free_round_robin_peer: passive health bookkeeping."""
    peer.conns -= 1
    if failed:
        peer.fails += 1
        peer.accessed = now
        peer.checked = now
        if peer.max_fails:
            peer.effective_weight -= peer.weight // peer.max_fails
        if peer.effective_weight < 0:
            peer.effective_weight = 0
    elif peer.accessed < peer.checked:
        # the peer answered after the fail window was re-opened: it is alive again
        peer.fails = 0


def _mark_chosen(peer: Peer, now: float) -> Peer:
    if now - peer.checked > peer.fail_timeout:
        peer.checked = now
    return peer


def smooth_weighted(peers: list[Peer], tried: set[Peer] | None, now: float) -> Peer | None:
    """nginx's smooth weighted round robin (ngx_http_upstream_get_peer)."""
    best: Peer | None = None
    total = 0
    for peer in peers:
        if (tried and peer in tried) or not peer.available(now):
            continue
        peer.current_weight += peer.effective_weight
        total += peer.effective_weight
        if peer.effective_weight < peer.weight:
            peer.effective_weight += 1
        if best is None or peer.current_weight > best.current_weight:
            best = peer
    if best is None:
        return None
    best.current_weight -= total
    return _mark_chosen(best, now)


def _single(peers: list[Peer]) -> Peer | None:
    """nginx never takes the only server of a group out for failures, only for down/max_conns."""
    if len(peers) != 1:
        return None
    return peers[0]


class Balancer:
    """Round robin, and the base of the other methods: primary peers, then backups."""

    # what the caller must pass as `key`: nothing, the client address, or the rendered hash key
    key_kind: str = ""

    def __init__(self, peers: Sequence[Peer], rng: random.Random | None = None) -> None:
        self.primary: list[Peer] = [p for p in peers if not p.backup]
        self.backup: list[Peer] = [p for p in peers if p.backup]
        self.rng = rng or random.Random()
        self.total_weight = sum(p.weight for p in self.primary)
        # how many peers one request may try (proxy_next_upstream_tries 0 means this many)
        # (down ones are not counted, as nginx counts them: their turn is never tried)
        self.tries = sum(not p.down for p in self.primary) + sum(not p.down for p in self.backup)

    def pick(self, tried: set[Peer] | None, now: float, key: bytes = b"") -> Peer | None:
        peer = self._pick_from(self.primary, tried, now)
        if peer is None and self.backup:
            peer = self._pick_from(self.backup, tried, now)
        return peer

    def _pick_from(self, peers: list[Peer], tried: set[Peer] | None, now: float) -> Peer | None:
        single = _single(peers)
        if single is not None:
            if single.down or (tried and single in tried):
                return None
            if single.max_conns and single.conns >= single.max_conns:
                return None
            return _mark_chosen(single, now)
        return smooth_weighted(peers, tried, now)


class LeastConn(Balancer):
    """ngx_http_upstream_least_conn_module: fewest active connections relative to weight."""

    def _pick_from(self, peers: list[Peer], tried: set[Peer] | None, now: float) -> Peer | None:
        if len(peers) == 1:
            return super()._pick_from(peers, tried, now)
        candidates: list[Peer] = []
        for peer in peers:
            if (tried and peer in tried) or not peer.available(now):
                continue
            if not candidates:
                candidates.append(peer)
                continue
            best = candidates[0]
            # conns/weight compared without division, as nginx does
            if peer.conns * best.weight < best.conns * peer.weight:
                candidates = [peer]
            elif peer.conns * best.weight == best.conns * peer.weight:
                candidates.append(peer)
        if not candidates:
            return None
        if len(candidates) == 1:
            return _mark_chosen(candidates[0], now)
        return smooth_weighted(candidates, None, now)


class _KeyedBalancer(Balancer):
    """Hash methods: a key maps to a peer; unusable peers are skipped by rehashing."""

    def _walk(self, weight_point: int) -> Peer:
        for peer in self.primary:
            if weight_point < peer.weight:
                return peer
            weight_point -= peer.weight
        return self.primary[-1]

    def _usable(self, peer: Peer, tried: set[Peer] | None, now: float) -> bool:
        return not (tried and peer in tried) and peer.available(now)


class IpHash(_KeyedBalancer):
    """ngx_http_upstream_ip_hash_module: the first three octets of an IPv4 client, all of IPv6."""

    key_kind = "ip"

    def pick(self, tried: set[Peer] | None, now: float, key: bytes = b"") -> Peer | None:
        if len(self.primary) == 1 or not self.total_weight:
            return super().pick(tried, now)
        octets = ip_hash_octets(key)
        hash_value = 89
        for _ in range(MAX_HASH_TRIES + 1):
            for octet in octets:
                hash_value = (hash_value * 113 + octet) % 6271
            peer = self._walk(hash_value % self.total_weight)
            if self._usable(peer, tried, now):
                return _mark_chosen(peer, now)
        return super().pick(tried, now)


def ip_hash_octets(address: bytes) -> bytes:
    """The part of a client address ip_hash uses, from its text form ("10.1.2.3")."""
    try:
        ip = ipaddress.ip_address(address.decode("ascii"))
    except ValueError:
        return b""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    packed = ip.packed
    return packed[:3] if len(packed) == 4 else packed


def memcached_hash(key: bytes, previous: int, rehash: int) -> int:
    """Cache::Memcached's hash as nginx computes it: ((crc32([REHASH] KEY) >> 16) & 0x7fff)."""
    data = (str(rehash).encode() + key) if rehash else key
    return previous + ((zlib.crc32(data) >> 16) & 0x7FFF)


class Hash(_KeyedBalancer):
    """ngx_http_upstream_hash_module without `consistent`: weighted modulo of the key's hash."""

    key_kind = "template"

    def pick(self, tried: set[Peer] | None, now: float, key: bytes = b"") -> Peer | None:
        if len(self.primary) == 1 or not key or not self.total_weight:
            return super().pick(tried, now)
        hash_value = 0
        for rehash in range(MAX_HASH_TRIES + 1):
            hash_value = memcached_hash(key, hash_value, rehash)
            peer = self._walk(hash_value % self.total_weight)
            if self._usable(peer, tried, now):
                return _mark_chosen(peer, now)
        return super().pick(tried, now)


@functools.lru_cache(maxsize=8192)
def server_points(server: str, weight: int) -> tuple[int, ...]:
    """One server's points on nginx's consistent-hash ring: 160 per unit of weight, each
    crc32(HOST \\0 PORT PREV_HASH) as in Cache::Memcached::Fast. Remembered per address and
    weight, so a registry change recomputes only the servers it touches."""
    host, sep, port = server.rpartition(":")
    if not sep or "]" in port:
        host, port = server, ""
    base = host.encode() + b"\0" + port.encode()
    points: list[int] = []
    previous = 0
    for _ in range(weight * 160):
        previous = zlib.crc32(base + struct.pack("<I", previous))
        points.append(previous)
    return tuple(points)


# a point value that more than one server's chain reaches (crc32 collisions: about one per
# 100,000 points), and every server that reaches it, in no particular order
SharedPoints = dict[int, list[str]]


def ketama_ring(peers: Sequence[Peer]) -> tuple[list[int], list[str], SharedPoints]:
    """nginx's ring: every peer's points sorted, a value reached twice kept once, for the first
    peer that reaches it; and the values reached twice with all their servers."""
    points: list[tuple[int, str]] = []
    for peer in peers:
        server = peer.written
        points.extend((value, server) for value in server_points(server, peer.weight))
    points.sort(key=lambda point: point[0])
    hashes: list[int] = []
    servers: list[str] = []
    shared: SharedPoints = {}
    for value, server in points:
        if hashes and hashes[-1] == value:
            shared.setdefault(value, [servers[-1]]).append(server)
            continue
        hashes.append(value)
        servers.append(server)
    return hashes, servers, shared


def ketama_points(peers: Sequence[Peer]) -> tuple[list[int], list[str]]:
    hashes, servers, _ = ketama_ring(peers)
    return hashes, servers


def _ring_members(peers: Sequence[Peer]) -> dict[str, int]:
    """Which address puts how many points on the ring; empty when an address is written with
    two different weights (the ring is then built whole)."""
    members: dict[str, int] = {}
    for peer in peers:
        if members.setdefault(peer.written, peer.weight) != peer.weight:
            return {}
    return members


class ConsistentHash(_KeyedBalancer):
    """ngx_http_upstream_hash_module with `consistent` (ketama). A new ring is derived from the
    previous one when only a few servers change: their points are taken out or put in, instead
    of sorting every point again (a change among 2,000 servers stalled the loop 0.25 s). The
    result is the ring a fresh build gives, point for point."""

    key_kind = "template"

    def __init__(
        self,
        peers: Sequence[Peer],
        rng: random.Random | None = None,
        previous: "ConsistentHash | None" = None,
    ) -> None:
        super().__init__(peers, rng)
        self.members = _ring_members(self.primary)
        if previous is None or not self.members or not previous.members:
            self.hashes, self.servers, self.shared = ketama_ring(self.primary)
        else:
            self.hashes, self.servers, self.shared = self._update(previous)
        self.by_server: dict[str, list[Peer]] = {}
        for peer in self.primary:
            self.by_server.setdefault(peer.written, []).append(peer)

    def _update(self, previous: "ConsistentHash") -> tuple[list[int], list[str], SharedPoints]:
        old, new = previous.members, self.members
        gone = {server for server, weight in old.items() if new.get(server) != weight}
        added = [(server, weight) for server, weight in new.items() if old.get(server) != weight]
        if sum(weight for _, weight in added) * 160 > len(previous.hashes) // 2:
            return ketama_ring(self.primary)  # much is new: a whole build is cheaper
        shared = {
            value: [server for server in servers if server not in gone]
            for value, servers in previous.shared.items()
        }
        hashes, servers = list(previous.hashes), list(previous.servers)
        for server in gone:
            # a server's points are known (cached): each is looked up, not searched for
            for value in server_points(server, old[server]):
                at = bisect.bisect_left(hashes, value)
                if at < len(hashes) and hashes[at] == value and not shared.get(value):
                    del hashes[at]
                    del servers[at]
        for server, weight in added:
            for value in server_points(server, weight):
                at = bisect.bisect_left(hashes, value)
                if at < len(hashes) and hashes[at] == value:
                    shared.setdefault(value, [servers[at]]).append(server)
                else:
                    hashes.insert(at, value)
                    servers.insert(at, server)
        # a value reached by several servers belongs to the first of them in peer order
        order: dict[str, int] = {}
        for position, peer in enumerate(self.primary):
            order.setdefault(peer.written, position)
        for value, owners in shared.items():
            if owners:
                servers[bisect.bisect_left(hashes, value)] = min(owners, key=order.__getitem__)
        return hashes, servers, {v: owners for v, owners in shared.items() if len(owners) > 1}

    def pick(self, tried: set[Peer] | None, now: float, key: bytes = b"") -> Peer | None:
        if len(self.primary) == 1 or not key or not self.hashes:
            return super().pick(tried, now)
        index = bisect.bisect_left(self.hashes, zlib.crc32(key))
        for attempt in range(len(self.hashes)):
            if attempt > MAX_HASH_TRIES:
                return super().pick(tried, now)
            server = self.servers[(index + attempt) % len(self.hashes)]
            candidates = [p for p in self.by_server[server] if self._usable(p, tried, now)]
            if candidates:
                peer = smooth_weighted(candidates, None, now)
                if peer is not None:
                    return peer
        return None


class Random(_KeyedBalancer):
    """ngx_http_upstream_random_module: weighted random, or the better of two (`random two`)."""

    def __init__(
        self, peers: Sequence[Peer], rng: random.Random | None = None, two: bool = False
    ) -> None:
        super().__init__(peers, rng)
        self.two = two
        self.ranges: list[int] = []
        total = 0
        for peer in self.primary:
            total += peer.weight
            self.ranges.append(total)

    def _random_peer(self) -> Peer:
        point = self.rng.randrange(self.total_weight)
        return self.primary[bisect.bisect_right(self.ranges, point)]

    def pick(self, tried: set[Peer] | None, now: float, key: bytes = b"") -> Peer | None:
        if len(self.primary) == 1 or not self.total_weight:
            return super().pick(tried, now)
        if not self.two:
            for _ in range(MAX_HASH_TRIES + 1):
                peer = self._random_peer()
                if self._usable(peer, tried, now):
                    return _mark_chosen(peer, now)
            return super().pick(tried, now)
        first: Peer | None = None
        for _ in range(MAX_HASH_TRIES + 1):
            peer = self._random_peer()
            if first is None:
                if self._usable(peer, tried, now):
                    first = peer
            elif peer is not first and self._usable(peer, tried, now):
                # the one with fewer connections relative to its weight
                if first.conns * peer.weight > peer.conns * first.weight:
                    first = peer
                return _mark_chosen(first, now)
        if first is not None:
            return _mark_chosen(first, now)
        return super().pick(tried, now)


def make_balancer(
    kind: str,
    peers: Sequence[Peer],
    *,
    consistent: bool = False,
    two: bool = False,
    rng: random.Random | None = None,
    previous: Balancer | None = None,
) -> Balancer:
    if kind == "least_conn":
        return LeastConn(peers, rng)
    if kind == "ip_hash":
        return IpHash(peers, rng)
    if kind == "hash":
        if consistent:
            ring = previous if isinstance(previous, ConsistentHash) else None
            return ConsistentHash(peers, rng, ring)
        return Hash(peers, rng)
    if kind == "random":
        return Random(peers, rng, two=two)
    return Balancer(peers, rng)
