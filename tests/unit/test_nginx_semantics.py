"""Pure pieces of nginx's semantics, fed data: map lookup order, PCRE quoting, listen port
ranges, the keep-alive cache's connection age, error page choice."""

from pathlib import Path

import pytest

from upsync.config import load_config
from upsync.config.maps import find_cycle
from upsync.config.model import ErrorPage, ServerSpec
from upsync.config.regex import compile_regex
from upsync.config.variables import compile_template
from upsync.proxy import error_pages
from upsync.upstream.peer import Peer
from upsync.upstream.pool import KeepalivePool, PooledConnection


def config_of(tmp_path: Path, http: str):  # type: ignore[no-untyped-def]
    path = tmp_path / "nginx.conf"
    path.write_text("events {}\nhttp {\n" + http + "\n}\n")
    return load_config(str(path))


def test_map_order_exact_then_masks_then_regexes_then_default(tmp_path: Path) -> None:
    config = config_of(
        tmp_path,
        "map $host $m { hostnames; default d; a.example.com exact; *.example.com head;"
        " .example.com dot; www.* tail; ~^www\\.(?<rest>.+)$ regex; }\n"
        "server { listen 80; }",
    )
    chosen = config.maps["m"].choose
    assert chosen("A.EXAMPLE.COM")[0].text == "exact"
    assert chosen("b.example.com")[0].text == "head"  # the longer mask wins over ".example.com"
    assert chosen("example.com")[0].text == "dot"
    assert chosen("www.other.org")[0].text == "tail"  # a mask before any regex
    assert chosen("nothing")[0].text == "d"


def test_map_regex_match_is_returned_for_its_captures(tmp_path: Path) -> None:
    config = config_of(tmp_path, 'map $uri $m { ~^/u/(?<id>\\d+) "user $id"; }\nserver { listen 80; }')
    template, match = config.maps["m"].choose("/u/42/x")
    assert match is not None and match.group("id") == "42"
    assert template.parts == ("user ", "id", "")


def test_map_cycles_are_found() -> None:
    assert find_cycle({}) is None


def test_pcre_quoted_text_is_literal() -> None:
    pattern = compile_regex(r"^(?<name>[a-z]+)\Q.example.com\E$")
    assert pattern.search("www.example.com")
    assert not pattern.search("wwwxexample.com")
    assert compile_regex(r"\Qa+b").search("xa+b")  # to the end without \E


def test_listen_port_range_listens_on_each_port(tmp_path: Path) -> None:
    config = config_of(tmp_path, "server { listen 127.0.0.1:8182-8184; }")
    assert [(lst.host, lst.port) for lst in config.servers[0].listens] == [
        ("127.0.0.1", 8182),
        ("127.0.0.1", 8183),
        ("127.0.0.1", 8184),
    ]
    with pytest.raises(Exception, match="invalid port range"):
        config_of(tmp_path, "server { listen 8185-8182; }")


def test_keepalive_time_retires_an_old_cached_connection() -> None:
    peer = Peer(ServerSpec(name="127.0.0.1:1", host="127.0.0.1", port=1))
    pool = KeepalivePool(capacity=4, timeout=60.0, max_requests=100, max_age=10.0)
    # the pool's own base class: a compiled class takes no interpreted subclass
    young, old = PooledConnection(peer), PooledConnection(peer)
    young.born, old.born = 95.0, 89.0
    assert pool.put(young, now=100.0)
    assert not pool.put(old, now=100.0)  # 11 s old: closed by its owner, never reused


def test_keepalive_pool_hands_out_the_latest_idle_connection_of_a_peer() -> None:
    """The pool keeps slots past its idle connections (so its list does not shrink and grow
    for every request): taking, putting back, evicting the least recently idle and dropping
    an expired one keep nginx's order. A connection the pool closes reaches the base class's
    close(), which raises: that is how this test sees it closed."""
    one = Peer(ServerSpec(name="127.0.0.1:1", host="127.0.0.1", port=1))
    two = Peer(ServerSpec(name="127.0.0.1:2", host="127.0.0.1", port=2))
    pool = KeepalivePool(capacity=3, timeout=60.0, max_requests=100)
    a, b, c, d = (PooledConnection(peer) for peer in (one, two, one, one))
    assert pool.put(a, 1.0) and pool.put(b, 2.0) and pool.put(c, 3.0)
    assert pool.connections() == [a, b, c]
    assert pool.take(one, 4.0) is c  # the most recently idle of its peer
    assert pool.take(one, 4.0) is a  # from the middle: the later ones move down
    assert pool.connections() == [b] and len(pool) == 1
    assert pool.take(one, 4.0) is None
    for _ in range(3):  # out and back, as a pooled connection goes for each request
        assert pool.put(a, 5.0)
        assert pool.take(one, 5.0) is a
    assert pool.connections() == [b]
    assert pool.put(a, 6.0) and pool.put(c, 7.0)
    with pytest.raises(NotImplementedError):
        pool.put(d, 8.0)  # past capacity: the least recently idle (b) is closed
    assert pool.connections() == [a, c, d]
    pool.discard(c)
    assert pool.connections() == [a, d]
    assert pool.take(one, 67.5) is d  # 59.5 s idle: within keepalive_timeout
    with pytest.raises(NotImplementedError):
        pool.take(one, 67.5)  # a, 61.5 s idle: closed, not handed out
    assert pool.connections() == [] and len(pool) == 0
    assert pool.put(b, 70.0)
    assert pool.connections() == [b]


def test_error_page_choice_and_final_status() -> None:
    page = ErrorPage(frozenset({404, 500}), compile_template("/e"), None)
    location = type("L", (), {"error_pages": (page,), "recursive_error_pages": False})()
    assert error_pages.page_for(location, 404, 0) is page  # type: ignore[arg-type]
    assert error_pages.page_for(location, 403, 0) is None  # type: ignore[arg-type]
    assert error_pages.page_for(location, 404, 1) is None  # type: ignore[arg-type]
    assert error_pages.final_status(page, 404) == 404
    assert error_pages.final_status(ErrorPage(page.codes, page.target, "="), 404) == 0
    assert error_pages.external_redirect_code(ErrorPage(page.codes, page.target, 301)) == 301
    assert error_pages.external_redirect_code(ErrorPage(page.codes, page.target, 200)) == 302
