"""Balancers fed with events, checked against nginx's documented behaviour."""

import random
import zlib
from collections import Counter

import pytest

from upsync.config.model import ServerSpec
from upsync.upstream.balancer import (
    Balancer,
    ConsistentHash,
    Hash,
    IpHash,
    LeastConn,
    Random,
    ip_hash_octets,
    ketama_points,
    ketama_ring,
    memcached_hash,
    release,
)
from upsync.upstream.peer import Peer


def peers(*weights: int, **flags: object) -> list[Peer]:
    return [
        Peer(
            ServerSpec(
                name=f"10.0.0.{i + 1}:80", host=f"10.0.0.{i + 1}", port=80, weight=w, **flags
            )
        )  # type: ignore[arg-type]
        for i, w in enumerate(weights)
    ]


def names(balancer: Balancer, count: int, now: float = 100.0) -> list[str]:
    out = []
    for _ in range(count):
        peer = balancer.pick(None, now)
        assert peer is not None
        peer.conns += 1
        release(peer, False, now)
        out.append("abcdefgh"[int(peer.name.split(".")[3].split(":")[0]) - 1])
    return out


def test_smooth_weighted_round_robin_matches_nginx_sequence() -> None:
    # nginx's documentation of the algorithm: weights 5, 1, 1 give a a b a c a a
    assert "".join(names(Balancer(peers(5, 1, 1)), 7)) == "aabacaa"
    assert "".join(names(Balancer(peers(5, 1, 1)), 14)) == "aabacaa" * 2


def test_equal_weights_alternate() -> None:
    assert names(Balancer(peers(1, 1, 1)), 6) == list("abcabc")


def test_down_peer_is_never_chosen() -> None:
    group = peers(1, 1)
    group[0].down = True
    assert set(names(Balancer(group), 5)) == {"b"}


def test_max_fails_takes_peer_out_for_fail_timeout() -> None:
    group = peers(1, 1)
    a = group[0]
    a.max_fails, a.fail_timeout = 2, 10.0
    balancer = Balancer(group)
    for _ in range(2):
        a.conns += 1
        release(a, True, 100.0)
    assert a.fails == 2
    assert set(names(balancer, 4, now=105.0)) == {"b"}  # within fail_timeout
    assert "a" in names(balancer, 4, now=111.0)  # window over: a gets a chance again
    # a success after the window closes the failure record
    a.conns += 1
    release(a, False, 111.0)
    assert a.fails == 0


def test_max_fails_zero_never_marks_unavailable() -> None:
    group = peers(1, 1)
    group[0].max_fails = 0
    for _ in range(5):
        group[0].conns += 1
        release(group[0], True, 100.0)
    assert "a" in names(Balancer(group), 2, now=101.0)


def test_failure_lowers_effective_weight_then_recovers() -> None:
    group = peers(4, 4)
    a = group[0]
    a.max_fails = 2
    a.conns += 1
    release(a, True, 100.0)
    assert a.effective_weight == 2  # weight / max_fails taken off, as nginx does
    Balancer(group).pick(None, 200.0)
    assert a.effective_weight == 3  # grows back by one per pick


def test_single_peer_ignores_failures_like_nginx() -> None:
    group = peers(1)
    for _ in range(3):
        group[0].conns += 1
        release(group[0], True, 100.0)
    assert Balancer(group).pick(None, 101.0) is group[0]


def test_backup_only_when_all_primaries_unavailable() -> None:
    group = peers(1, 1, 1)
    group[2].backup = True
    balancer = Balancer(group)
    assert "c" not in names(balancer, 6)
    for peer in group[:2]:
        peer.down = True
    balancer = Balancer(group)
    assert names(balancer, 2) == ["c", "c"]


def test_tried_peers_are_skipped_within_a_request() -> None:
    group = peers(1, 1, 1)
    balancer = Balancer(group)
    tried: set[Peer] = set()
    seen = []
    for _ in range(3):
        peer = balancer.pick(tried, 100.0)
        assert peer is not None
        tried.add(peer)
        seen.append(peer)
    assert len(set(seen)) == 3
    assert balancer.pick(tried, 100.0) is None


def test_max_conns_limits_a_peer() -> None:
    group = peers(1, 1)
    group[0].max_conns = 1
    group[0].conns = 1
    balancer = Balancer(group)
    for _ in range(3):
        peer = balancer.pick(None, 100.0)
        assert peer is group[1]


def test_least_conn_prefers_fewest_connections_per_weight() -> None:
    group = peers(1, 1, 2)
    group[0].conns, group[1].conns, group[2].conns = 3, 1, 3
    assert LeastConn(group).pick(None, 100.0) is group[1]
    group[1].conns = 2
    # 2/1 vs 3/2: c wins on ratio
    assert LeastConn(group).pick(None, 100.0) is group[2]


def test_least_conn_ties_use_weighted_round_robin() -> None:
    group = peers(1, 1)
    balancer = LeastConn(group)
    assert [balancer.pick(None, 100.0) for _ in range(4)] == [
        group[0],
        group[1],
        group[0],
        group[1],
    ]


def test_ip_hash_uses_first_three_octets() -> None:
    assert ip_hash_octets(b"192.168.1.77") == bytes([192, 168, 1])
    balancer = IpHash(peers(1, 1, 1, 1))
    first = balancer.pick(None, 100.0, b"192.168.1.10")
    for last in range(11, 30):
        assert balancer.pick(None, 100.0, f"192.168.1.{last}".encode()) is first


def test_ip_hash_matches_nginx_arithmetic() -> None:
    balancer = IpHash(peers(1, 1, 1))
    hash_value = 89
    for octet in (10, 1, 2):
        hash_value = (hash_value * 113 + octet) % 6271
    expected = balancer.primary[hash_value % 3]
    assert balancer.pick(None, 100.0, b"10.1.2.3") is expected


def test_ip_hash_skips_down_peer_by_rehashing() -> None:
    group = peers(1, 1, 1)
    balancer = IpHash(group)
    chosen = balancer.pick(None, 100.0, b"10.1.2.3")
    assert chosen is not None
    chosen.down = True
    other = balancer.pick(None, 100.0, b"10.1.2.3")
    assert other is not None and other is not chosen


def test_hash_is_stable_and_follows_memcached_formula() -> None:
    group = peers(1, 1, 1)
    balancer = Hash(group)
    expected_point = memcached_hash(b"/some/uri", 0, 0) % 3
    assert expected_point == ((zlib.crc32(b"/some/uri") >> 16) & 0x7FFF) % 3
    assert balancer.pick(None, 100.0, b"/some/uri") is group[expected_point]
    assert all(balancer.pick(None, 100.0, b"/some/uri") is group[expected_point] for _ in range(5))


def test_consistent_hash_ring_has_160_points_per_weight() -> None:
    group = peers(1, 2)
    hashes, servers = ketama_points(group)
    assert len(hashes) == 3 * 160
    assert hashes == sorted(hashes)
    assert Counter(servers)[group[1].written] == 320


def test_consistent_hash_moves_few_keys_when_a_server_is_added() -> None:
    keys = [f"/item/{i}".encode() for i in range(2000)]
    before = ConsistentHash(peers(1, 1, 1, 1))
    after = ConsistentHash(peers(1, 1, 1, 1, 1))
    moved = sum(
        1
        for key in keys
        if before.pick(None, 100.0, key).name != after.pick(None, 100.0, key).name  # type: ignore[union-attr]
    )
    assert moved < len(keys) * 0.35  # about 1/5 move; modulo hashing would move about 4/5


def ring_peer(index: int, weight: int) -> Peer:
    name = f"10.1.{index // 250}.{index % 250 + 1}:80"
    return Peer(ServerSpec(name=name, host=name[:-3], port=80, weight=weight, written=name))


def test_consistent_hash_ring_derived_from_the_previous_one_equals_a_fresh_build() -> None:
    rng = random.Random(11)
    current = {i: rng.randint(1, 3) for i in range(300)}
    ring = ConsistentHash([ring_peer(i, w) for i, w in current.items()])
    for _ in range(20):  # servers leave, join and change weight, a few at a time
        for _ in range(rng.randint(1, 4)):
            index = rng.randrange(400)
            if index in current and rng.random() < 0.5:
                del current[index]
            else:
                current[index] = rng.randint(1, 3)
        group = [ring_peer(i, w) for i, w in current.items()]
        ring = ConsistentHash(group, previous=ring)
        assert (ring.hashes, ring.servers, ring.shared) == ketama_ring(group)


def test_random_respects_weights() -> None:
    balancer = Random(peers(3, 1), rng=random.Random(7))
    counts = Counter(names(balancer, 4000))
    assert 2.5 < counts["a"] / counts["b"] < 3.5


def test_random_two_prefers_fewer_connections() -> None:
    group = peers(1, 1)
    group[0].conns = 10
    balancer = Random(group, rng=random.Random(1), two=True)
    assert all(balancer.pick(None, 100.0) is group[1] for _ in range(20))


@pytest.mark.parametrize("kind", [Balancer, LeastConn, IpHash, Hash, ConsistentHash, Random])
def test_every_method_returns_none_when_everything_is_down(kind: type[Balancer]) -> None:
    group = peers(1, 1)
    for peer in group:
        peer.down = True
    assert kind(group).pick(None, 100.0, b"10.0.0.1") is None
