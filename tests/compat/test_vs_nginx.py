"""The same config under Debian's nginx and under upsync: the same statuses, the same peers,
in the same order, including the failure cases."""

import http.client
import re
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, ExitStack
from pathlib import Path

import pytest

from tests.helpers import (
    Backend,
    KeepAliveClient,
    Process,
    free_port,
    nginx_binary,
    request,
    running_nginx,
    running_upsync,
)

pytestmark = [
    pytest.mark.compat,
    pytest.mark.skipif(
        nginx_binary() is None, reason="nginx is not installed (make test installs it)"
    ),
]

Runner = Callable[[str, int], AbstractContextManager[Process]]


def config(port: int, upstream: str, location: str = "") -> str:
    return f"""
worker_processes 1;
events {{ worker_connections 256; }}
http {{
    access_log off;
    upstream backend {{
        {upstream}
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://backend;
            {location}
        }}
    }}
}}
"""


def with_locations(port: int, backend_port: int, locations: str) -> str:
    """config() with more locations before `location /`, proxying to one backend."""
    return config(port, f"server 127.0.0.1:{backend_port};").replace(
        "        location / {", locations + "        location / {", 1
    )


def http_config(servers: str) -> str:
    """A whole configuration around server blocks, access log off."""
    return (
        "worker_processes 1;\nevents { worker_connections 64; }\n"
        f"http {{\n    access_log off;\n{servers}}}\n"
    )


def observe(runner: Runner, upstream: str, location: str, count: int, path: str = "/") -> list[str]:
    port = free_port()
    with runner(config(port, upstream, location), port):
        seen = []
        for _ in range(count):
            status, headers, _ = request(port, path)
            seen.append(f"{status} {headers.get('x-backend', '-')}")
        return seen


def both(
    upstream: Callable[[dict[str, Backend], list[int]], str],
    location: str,
    count: int,
    backends: dict[str, dict[str, float | int]],
    dead: int = 0,
    path: str = "/",
) -> tuple[list[str], list[str]]:
    results = []
    # the same ports in both runs: `hash ... consistent` places servers by their address
    ports = {name: free_port() for name in backends}
    dead_ports = [free_port() for _ in range(dead)]
    for runner in (running_nginx, running_upsync):
        with ExitStack() as stack:
            started = {
                name: stack.enter_context(Backend(name, ports[name], **opts))
                for name, opts in backends.items()
            }
            results.append(observe(runner, upstream(started, dead_ports), location, count, path))
    return results[0], results[1]


def server(backend: Backend, params: str = "") -> str:
    return f"server 127.0.0.1:{backend.port} {params};"


def test_weighted_round_robin_sequence() -> None:
    nginx, upsync = both(
        lambda b, _: server(b["a"], "weight=5") + server(b["b"]) + server(b["c"]),
        "",
        21,
        {"a": {}, "b": {}, "c": {}},
    )
    assert nginx == upsync
    assert nginx[:7] == ["200 a", "200 a", "200 b", "200 a", "200 c", "200 a", "200 a"]


def test_peer_down() -> None:
    nginx, upsync = both(
        lambda b, dead: f"server 127.0.0.1:{dead[0]};" + server(b["a"]) + server(b["b"]),
        "",
        9,
        {"a": {}, "b": {}},
        dead=1,
    )
    assert nginx == upsync
    assert all(entry.startswith("200") for entry in nginx)


def test_peer_timing_out() -> None:
    nginx, upsync = both(
        lambda b, _: server(b["slow"]) + server(b["fast"]),
        "proxy_read_timeout 300ms;",
        6,
        {"slow": {"delay": 1.0}, "fast": {}},
    )
    assert nginx == upsync
    assert nginx == ["200 fast"] * 6


def test_only_peer_timing_out_gives_504() -> None:
    nginx, upsync = both(
        lambda b, _: server(b["slow"]), "proxy_read_timeout 300ms;", 2, {"slow": {"delay": 1.0}}
    )
    assert nginx == upsync == ["504 -", "504 -"]


def test_all_peers_down() -> None:
    nginx, upsync = both(
        lambda _, dead: "".join(f"server 127.0.0.1:{port};" for port in dead), "", 4, {}, dead=2
    )
    assert nginx == upsync == ["502 -"] * 4


def test_backup_takes_over() -> None:
    nginx, upsync = both(
        lambda b, dead: f"server 127.0.0.1:{dead[0]};" + server(b["spare"], "backup"),
        "",
        4,
        {"spare": {}},
        dead=1,
    )
    assert nginx == upsync == ["200 spare"] * 4


def test_http_500_passed_through_or_retried() -> None:
    plain = both(
        lambda b, _: server(b["bad"]) + server(b["good"]),
        "",
        4,
        {"bad": {"status": 500}, "good": {}},
    )
    assert plain[0] == plain[1]
    retried = both(
        lambda b, _: server(b["bad"]) + server(b["good"]),
        "proxy_next_upstream error timeout http_500;",
        4,
        {"bad": {"status": 500}, "good": {}},
    )
    assert retried[0] == retried[1] == ["200 good"] * 4


def test_max_fails_zero_keeps_retrying_dead_peer() -> None:
    nginx, upsync = both(
        lambda b, dead: f"server 127.0.0.1:{dead[0]} max_fails=0;" + server(b["a"]),
        "",
        6,
        {"a": {}},
        dead=1,
    )
    assert nginx == upsync == ["200 a"] * 6


def test_next_upstream_tries_limit() -> None:
    nginx, upsync = both(
        lambda b, dead: (
            "".join(f"server 127.0.0.1:{p} max_fails=0;" for p in dead) + server(b["a"])
        ),
        "proxy_next_upstream_tries 2;",
        6,
        {"a": {}},
        dead=2,
    )
    assert nginx == upsync


def test_ip_hash_and_hash_choose_like_nginx() -> None:
    for method in ("ip_hash;", "hash $request_uri;", "hash $request_uri consistent;"):
        for key in ("/some/key", "/other", "/a/b/c?d=1"):
            nginx, upsync = both(
                lambda b, _: method + server(b["a"]) + server(b["b"]) + server(b["c"]),  # noqa: B023
                "",
                2,
                {"a": {}, "b": {}, "c": {}},
                path=key,
            )
            assert nginx == upsync, (method, key)


def test_connect_timeout() -> None:
    from tests.helpers import BlackHole

    with BlackHole() as hole:
        nginx, upsync = both(
            lambda b, _: f"server 127.0.0.1:{hole.port};" + server(b["a"]),
            "proxy_connect_timeout 200ms;",
            4,
            {"a": {}},
        )
        assert nginx == upsync == ["200 a"] * 4
        nginx, upsync = both(
            lambda b, _: f"server 127.0.0.1:{hole.port};", "proxy_connect_timeout 200ms;", 2, {}
        )
        assert nginx == upsync == ["504 -"] * 2


def test_next_upstream_timeout() -> None:
    nginx, upsync = both(
        lambda b, _: server(b["slow"]) + server(b["fast"]),
        "proxy_read_timeout 300ms; proxy_next_upstream_timeout 100ms;",
        2,
        {"slow": {"delay": 1.0}, "fast": {}},
    )
    assert nginx == upsync


def test_bare_lf_requests_are_accepted_like_nginx() -> None:
    """nginx-upsync-module's test suite talks to nginx with LF-only lines."""
    from tests.helpers import raw_exchange

    statuses = []
    for runner in (running_nginx, running_upsync):
        with Backend("a") as backend:
            port = free_port()
            with runner(config(port, server(backend)), port):
                reply = raw_exchange(port, b"GET /x HTTP/1.0\nHost: localhost\n\n")
                statuses.append(reply.split(b"\r\n", 1)[0].split(b" ")[1])
                assert reply.endswith(b"a\n")
    assert statuses == [b"200", b"200"]


# requests nginx and upsync must answer alike; what reaches the upstream is compared too
EDGE_REQUESTS = [
    b"GET / HTTP/2.0\r\nHost: x\r\n\r\n",
    b"GET / HTTP/9.9\r\nHost: x\r\n\r\n",
    b"GET / HTTP/1.2\r\nHost: x\r\nConnection: close\r\n\r\n",
    b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nX-Long: " + b"b" * 9000 + b"\r\n\r\n",
    b"FOOBAR /m HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    b"GET /caf\xc3\xa9 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    b"GET /e HTTP/1.1\r\nHost: x\r\nExpect: foo\r\nConnection: close\r\n\r\n",
    b"GET http://x?q=2 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    b"GET /h HTTP/1.1\r\nHost: x\r\nX_Real_IP: 6.6.6.6\r\nX.Dot: 1\r\nConnection: close\r\n\r\n",
    b"POST /t HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    b"3\r\nabc\r\n0\r\nX-Trailer: forged\r\n\r\n",
    b"POST /cr HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    b"3\rabc\r\n0\r\n\r\n",
    b"GET /old\r\n",  # HTTP/0.9: the body alone comes back
    b"TRACE /t HTTP/1.1\r\nHost: x\r\n\r\n",
    b"CONNECT /c HTTP/1.1\r\nHost: x\r\n\r\n",
    b"CONNECT x:443 HTTP/1.1\r\nHost: x\r\n\r\n",
    b"POST /c0 HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 0\r\n"
    b"Connection: close\r\n\r\n",
    # Host and absolute-URI authority forms nginx refuses (its http_host.t) or accepts
    *(
        b"GET / HTTP/1.1\r\nHost: " + host + b"\r\nConnection: close\r\n\r\n"
        for host in (
            b"..",
            b".",
            b"a..b",
            b"a/b",
            b"host:65536",
            b"host:99999",
            b":9000:80",
            b"[::1",
            b"[::1]x",
            b"[::1]:80",
            b"EXAMPLE.com.",
            b"a\\b",
            b"host:80:80",
            b"",
        )
    ),
    b"GET http:/// HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    b"GET http://../ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    b"GET http://a:70000/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    # the absolute-form authority as nginx's request-line parser takes it
    *(
        b"GET http://" + authority + b"/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        for authority in (b"example.com.:1.2", b"1.2.3.4:9000:80", b"[::1].", b"[::1].:80", b"a_b", b"A-b.c:")
    ),
    # a "%" without two hex digits is a 400; a fragment is no part of $uri or $args
    b"GET /foo/bar% HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    b"GET /foo/bar%1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    b"GET /foo/bar%zz/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    b"GET /foo/bar/..#frag HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    b"GET http://x?args#frag HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    # headers nginx takes once: a second one is a 400
    *(
        b"GET /u HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + line + line + b"\r\n"
        for line in (
            b"If-Match: a\r\n",
            b"If-None-Match: a\r\n",
            b"If-Modified-Since: a\r\n",
            b"If-Unmodified-Since: a\r\n",
            b"If-Range: a\r\n",
            b"Content-Range: a\r\n",
            b"Authorization: a\r\n",
            b"Expect: a\r\n",
            b"Transfer-Encoding: foo\r\n",
            b"Via: a\r\n",  # not one of them: passed on
        )
    ),
]


def edge_answers(runner: Runner) -> list[tuple[int, str, str | None]]:
    """Per request: the status, the status line's reason and, if the request was passed on,
    what the upstream saw (or what came back, for HTTP/0.9)."""
    from tests.helpers import RawRequest, ScriptedBackend, ok_response, raw_exchange

    def echo_path(req: RawRequest) -> tuple[bytes, bool]:
        seen = (req.method + " " + req.path).encode("latin-1")
        names = sorted(line.split(b":")[0].lower() for line in req.head.split(b"\r\n")[1:])
        return ok_response(seen + b" " + b",".join(names)), True

    port = free_port()
    answers: list[tuple[int, str, str | None]] = []
    with (
        ScriptedBackend(echo_path) as backend,
        runner(config(port, f"server 127.0.0.1:{backend.port};", "proxy_http_version 1.1;"), port),
    ):
        for raw in EDGE_REQUESTS:
            before = len(backend.requests)
            reply = raw_exchange(port, raw, timeout=3)
            if reply.startswith(b"HTTP/1.1 "):
                status, body = int(reply[9:12]), reply.partition(b"\r\n\r\n")[2].decode("latin-1")
                # after an interim answer, the final one: its Server and Date are each their own
                body = re.sub(r"\r\n(Server|Date): [^\r]*", "", body)
                reason = reply.partition(b"\r\n")[0][13:].decode("latin-1")
            else:
                status, reason, body = 0, "", reply.decode("latin-1")
            answers.append((status, reason, body if len(backend.requests) > before else None))
    return answers


def differing(
    inputs: Sequence[bytes], ours: Sequence[object], theirs: Sequence[object]
) -> list[object]:
    """Each input (its start) whose answer under upsync is not nginx's, with both answers."""
    return [
        (raw[:60], mine, nginx)
        for raw, mine, nginx in zip(inputs, ours, theirs, strict=True)
        if mine != nginx
    ]


def test_edge_requests_are_answered_and_forwarded_as_nginx_does() -> None:
    ours, theirs = edge_answers(running_upsync), edge_answers(running_nginx)
    assert differing(EDGE_REQUESTS, ours, theirs) == []


# upstream responses nginx and upsync must relay alike (status, headers, body)
EDGE_RESPONSES = [
    b"HTTP/1.1 200 OK\nContent-Length: 3\nX-Lf: 1\n\nabc",  # old servers end lines in LF
    b"HTTP/1.1 200 OK\r\nCache-Control: a\r\nCache-Control: b\r\nContent-Length: 3\r\n\r\nabc",
]


def response_answers(runner: Runner) -> list[tuple[int, list[str], bytes]]:
    from tests.helpers import RawRequest, ScriptedBackend, raw_exchange

    def scripted(req: RawRequest) -> tuple[bytes, bool]:
        return EDGE_RESPONSES[int(req.path.strip("/"))], False

    port = free_port()
    answers = []
    with (
        ScriptedBackend(scripted) as backend,
        runner(config(port, f"server 127.0.0.1:{backend.port};"), port),
    ):
        for index in range(len(EDGE_RESPONSES)):
            reply = raw_exchange(
                port, b"GET /%d HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % index, timeout=3
            )
            head, _, body = reply.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            names = sorted(
                line.lower()
                for line in lines[1:]
                if not line.lower().startswith(("server:", "date:"))
            )
            status = int(lines[0][9:12])
            answers.append((status, names, body if status == 200 else b""))
    return answers


def test_upstream_responses_are_relayed_as_nginx_does() -> None:
    ours, theirs = response_answers(running_upsync), response_answers(running_nginx)
    assert differing(EDGE_RESPONSES, ours, theirs) == []


# what nginx 1.23 on does (nginx-tests' proxy_duplicate_headers.t), where Debian's 1.22 relays
# the response as it came: a framing other than one "chunked" is a 502 (the client would read
# the body by a framing the proxy did not use), a repeated single-valued header keeps its first
NEWER_NGINX_RESPONSES = [
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: foo\r\nConnection: close\r\n\r\n", 502, ""),
    (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n0\r\n\r\n",
        502,
        "",
    ),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", 502, ""),
    (
        b"HTTP/1.1 200 OK\r\nExpires: foo\r\nExpires: bar\r\nETag: a\r\nETag: b\r\n"
        b"Content-Length: 3\r\n\r\nabc",
        200,
        "expires: foo,etag: a",
    ),
]


def test_upstream_framing_and_repeated_headers_as_nginx_1_23_does() -> None:
    from tests.helpers import ScriptedBackend, raw_exchange

    for response, status, kept in NEWER_NGINX_RESPONSES:
        port = free_port()
        with (
            ScriptedBackend(lambda req, data=response: (data, False)) as backend,
            running_upsync(config(port, f"server 127.0.0.1:{backend.port};"), port),
        ):
            reply = raw_exchange(port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert reply.startswith(b"HTTP/1.1 %d " % status), (response, reply)
        head = reply.partition(b"\r\n\r\n")[0].decode().lower().split("\r\n")
        shown = ",".join(line for line in head if line.startswith(("etag", "expires")))
        assert shown == kept, response


def test_an_upstream_transfer_coding_other_than_chunked_is_refused() -> None:
    """nginx from 1.23 answers 502 (Debian's 1.22 passes it on): the client would read the body
    by a framing the proxy did not use."""
    from tests.helpers import ScriptedBackend, raw_exchange

    bad = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nContent-Length: 3\r\n\r\nabc"
    port = free_port()
    with (
        ScriptedBackend(lambda req: (bad, False)) as backend,
        running_upsync(config(port, f"server 127.0.0.1:{backend.port};"), port),
    ):
        reply = raw_exchange(port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert reply.startswith(b"HTTP/1.1 502 ")


def test_server_tokens_off_drops_the_version_as_nginx_does() -> None:
    """Proxied answers, upsync's own error pages and return: the product without its version,
    in a location that says so; the version stays where server_tokens is on."""
    seen = {}
    for runner, product in ((running_nginx, "nginx"), (running_upsync, "upsync")):
        with Backend("a") as backend:
            port = free_port()
            text = config(port, server(backend)).replace(
                "location / {",
                "location /versioned { server_tokens on; return 404; }\n"
                "        location /plain { return 404; }\n"
                "        server_tokens off;\n        location / {",
            )
            with runner(text, port):
                answers = []
                for path in ("/", "/versioned", "/plain"):
                    status, headers, body = request(port, path)
                    page = body.decode().replace(product, "PRODUCT")
                    answers.append((status, headers["server"].replace(product, "PRODUCT"), page))
                seen[product] = answers
    assert seen["nginx"][0][:2] == seen["upsync"][0][:2] == (200, "PRODUCT")
    versioned_nginx, versioned_upsync = seen["nginx"][1], seen["upsync"][1]
    assert versioned_upsync[1].startswith("PRODUCT/") and versioned_nginx[1].startswith("PRODUCT/")
    assert versioned_upsync[0] == versioned_nginx[0] == 404
    assert "<center>PRODUCT/" in versioned_upsync[2] and "<center>PRODUCT/" in versioned_nginx[2]
    assert seen["upsync"][2] == seen["nginx"][2]  # the same page, signed without a version


REDIRECT_LOCATIONS = """
        location /one/ { proxy_pass http://backend/two/; }
        location /off/ { proxy_pass http://backend; proxy_redirect off; }
        location /set/ {
            proxy_pass http://backend;
            proxy_redirect http://backend/set/ http://front.example/;
            proxy_redirect /set/rel /moved;
        }
        location /both/ { proxy_pass http://backend; proxy_redirect default; proxy_redirect http://x/ /y/; }
        location /ret { return 302 /elsewhere; }
        location /relret { absolute_redirect off; return 301 /kept; }
        location /noport { port_in_redirect off; proxy_pass http://backend; }
        location /rx/ {
            set $where moved;
            proxy_pass http://backend;
            proxy_redirect http://backend/rx/$where/ /$where/;
            proxy_redirect ~^(.+)/with_([^/]+) $1/$2/test.html;
            proxy_redirect ~*RE+GEXP? /replaced/$host;
        }
"""


def redirect_answers(runner: Runner) -> list[tuple[str, str, str]]:
    """Per request: the Location and Refresh the client got for the ones the backend sent."""
    from tests.helpers import RawRequest, ScriptedBackend, ok_response

    sent: dict[str, tuple[str, str]] = {}

    def scripted(req: RawRequest) -> tuple[bytes, bool]:
        location, refresh = sent[req.path.split("?")[0]]
        extra = f"Location: {location}\r\nRefresh: {refresh}\r\n".encode()
        return ok_response(b"r").replace(b"\r\n", b"\r\n" + extra, 1), True

    cases = [
        ("/plain", "/plain", "http://backend/plain/x", "3; url=http://backend/r"),
        ("/plain", "/plain2", "http://other/x", "3;URL=http://backend/R"),
        ("/plain", "/plain3", "/relative", "no url here"),
        ("/one/", "/two/a", "http://backend/two/a/b", "0; url=http://backend/two/c"),
        ("/off/", "/off/a", "http://backend/off/a", "1; url=http://backend/"),
        ("/set/", "/set/a", "http://backend/set/a", "1; url=/set/rel/x"),
        ("/set/", "/set/b", "/set/rel/y", "1; url=http://backend/z"),
        ("/both/", "/both/a", "http://x/q", "1; url=http://backend/w"),
        ("/noport", "/noport", "http://backend/n", "-"),
        ("/ret", "/ret", "-", "-"),
        ("/relret", "/relret", "-", "-"),
        ("/rx/", "/rx/a", "http://backend/rx/moved/a", "2; url=http://backend/rx/with_cap"),
        ("/rx/", "/rx/b", "http://backend/rx/with_x/y", "2; url=http://backend/regexp/z"),
        ("/rx/", "/rx/c", "http://backend/Regex", "2; url=http://backend/rx/none"),
    ]
    port = free_port()
    answers = []
    with ScriptedBackend(scripted) as backend:
        text = config(port, f"server 127.0.0.1:{backend.port};").replace(
            "        location / {", REDIRECT_LOCATIONS + "        location /plain {", 1
        )
        with runner(text, port):
            for prefix, upstream_path, location, refresh in cases:
                sent[upstream_path] = (location, refresh)
                asked = (
                    prefix + upstream_path.split("/", 2)[-1] if prefix == "/one/" else upstream_path
                )
                _, headers, _ = request(port, asked)
                got = headers.get("location", "-").replace(f":{port}/", ":PORT/")
                answers.append((asked, got, headers.get("refresh", "-")))
    return answers


def test_proxy_redirect_rewrites_location_and_refresh_as_nginx_does() -> None:
    ours, theirs = redirect_answers(running_upsync), redirect_answers(running_nginx)
    assert ours == theirs
    # the default, with nothing set; its result is made absolute, as return's
    assert ("/plain", "http://127.0.0.1:PORT/plain/x", "3; url=/r") in theirs
    assert ("/ret", "http://127.0.0.1:PORT/elsewhere", "-") in theirs


ADD_HEADER_LOCATIONS = """
        add_header X-Http level-http;
        location /inherit { proxy_pass http://backend; }
        location /own { add_header X-Own "own $request_method"; add_header X-Empty ""; proxy_pass http://backend; }
        location /missing { add_header X-Plain p; add_header X-Always a always; return 404; }
        location /ok { add_header X-Plain p; add_header X-Always a always; return 200 "ok"; }
        location /moved { add_header X-Plain p; return 301 /elsewhere; }
        location /upstream-error { add_header X-Plain p; add_header X-Always a always; proxy_pass http://backend; }
"""


def added_header_answers(runner: Runner) -> list[tuple[str, int, list[str]]]:
    from tests.helpers import RawRequest, ScriptedBackend, ok_response

    def scripted(req: RawRequest) -> tuple[bytes, bool]:
        if req.path == "/upstream-error":
            return b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n", True
        return ok_response(b"up"), True

    port = free_port()
    answers = []
    with ScriptedBackend(scripted) as backend:
        text = with_locations(port, backend.port, ADD_HEADER_LOCATIONS)
        with runner(
            text.replace("access_log off;", "access_log off;\n    add_header X-Top t;"), port
        ):
            for path in ("/", "/inherit", "/own", "/missing", "/ok", "/moved", "/upstream-error"):
                status, headers, _ = request(port, path)
                names = sorted(f"{k}={v}" for k, v in headers.items() if k.startswith("x-"))
                answers.append((path, status, names))
    return answers


def test_add_header_is_applied_and_inherited_as_nginx_does() -> None:
    ours, theirs = added_header_answers(running_upsync), added_header_answers(running_nginx)
    assert ours == theirs
    assert ("/missing", 404, ["x-always=a"]) in theirs  # only `always` on an error


def hidden_header_answers(runner: Runner) -> list[tuple[str, list[str]]]:
    from tests.helpers import RawRequest, ScriptedBackend, ok_response

    def scripted(req: RawRequest) -> tuple[bytes, bool]:
        extra = b"Server: origin\r\nX-Secret: s\r\nX-Pad: p\r\nX-Accel-Charset: c\r\nX-Kept: k\r\n"
        return ok_response(b"up").replace(b"\r\n", b"\r\n" + extra, 1), True

    locations = """
        proxy_hide_header X-Secret;
        location /default { proxy_pass http://backend; }
        location /own { proxy_hide_header X-Kept; proxy_pass http://backend; }
        location /passed { proxy_pass_header Server; proxy_pass_header X-Pad; proxy_pass http://backend; }
"""
    port = free_port()
    answers = []
    with ScriptedBackend(scripted) as backend:
        text = with_locations(port, backend.port, locations)
        with runner(text, port):
            for path in ("/default", "/own", "/passed"):
                _, headers, _ = request(port, path)
                shown = sorted(
                    f"{k}={v}" if k != "server" or v == "origin" else "server=PROXY"
                    for k, v in headers.items()
                    if k not in ("date", "content-length", "connection", "content-type")
                )
                answers.append((path, shown))
    return answers


def test_proxy_hide_and_pass_header_as_nginx_does() -> None:
    ours, theirs = hidden_header_answers(running_upsync), hidden_header_answers(running_nginx)
    assert ours == theirs
    # the upstream's Server instead of the proxy's; X-Secret hidden from the server level
    assert ("/passed", ["server=origin", "x-kept=k", "x-pad=p"]) in theirs


@pytest.mark.parametrize(
    "others",
    ["down", "dead", "both 404"],
)
def test_next_upstream_http_404_passes_the_last_404_on(others: str) -> None:
    """A `down` server is not counted in the tries (nginx counts only the others), so the 404
    of the last one tried is passed on, not 502."""

    def upstream(b: dict[str, Backend], dead: list[int]) -> str:
        if others == "down":
            return server(b["a"]) + server(b["b"], "down")
        if others == "dead":
            return server(b["a"]) + f"server 127.0.0.1:{dead[0]};"
        return server(b["a"]) + server(b["b"])

    backends: dict[str, dict[str, float | int]] = {"a": {"status": 404}, "b": {"status": 404}}
    nginx, upsync = both(
        upstream, "proxy_next_upstream error timeout http_404;", 4, backends, dead=1
    )
    assert upsync == nginx
    if others != "dead":  # a dead next server makes it 502 (the last try failed to connect)
        assert all(answer.startswith("404") for answer in nginx)


LOGGED_VARIABLES = (
    "upstream_addr",
    "upstream_status",
    "upstream_response_length",
    "upstream_connect_time",
    "upstream_header_time",
    "upstream_response_time",
    "upstream_http_x_backend",
    "sent_http_content_length",
    "sent_http_x_backend",
    "status",
    "body_bytes_sent",
    "remote_user",
    "connection_requests",
    "pipe",
    "https",
    "request_length",
    "http_referer",
    "request_id",
    "upstream_bytes_received",
    "upstream_bytes_sent",
    "connection_time",
)


def logged_variables(runner: Runner, ports: dict[str, int]) -> list[list[str]]:
    """One access log line per request, each variable of LOGGED_VARIABLES a field; timings
    shown as T (a number of seconds with milliseconds) and the request id as ID (32 hex)."""
    import socket
    from pathlib import Path

    from tests.helpers import KeepAliveClient, wait_until

    port = free_port()
    fields = "|".join(f"${name}" for name in LOGGED_VARIABLES)
    with Backend("a", ports["a"]), ExitStack() as stack:
        workdir = Path(stack.enter_context(__import__("tempfile").TemporaryDirectory()))
        upstream = f"server 127.0.0.1:{ports['dead']}; server 127.0.0.1:{ports['a']};"
        text = config(port, upstream).replace(
            "access_log off;",
            f"log_format fields '{fields}';\n    access_log {workdir}/access.log fields;",
        ).replace(
            "        location / {",
            "        location /none { proxy_pass http://127.0.0.1:"
            f"{ports['dead']}; proxy_next_upstream off; }}\n"
            '        location /own { return 200 "own"; }\n'
            "        location / {",
            1,
        )
        with runner(text, port):
            request(port, "/first")  # round robin: the dead server is tried first, then a
            request(port, "/second", headers={"Authorization": "Basic dXNlcjpwYXNz"})
            client = KeepAliveClient(port)
            client.get("/own")
            client.get("/own", headers={"Referer": "http://r/"})
            client.close()
            request(port, "/none")
            with socket.create_connection(("127.0.0.1", port)) as raw:
                raw.sendall(b"GET /own HTTP/1.1\r\nHost: x\r\n\r\n" * 2)
                raw.settimeout(5)
                received = b""
                while received.count(b"own") < 2:
                    received += raw.recv(65536)
            log = workdir / "access.log"
            wait_until(lambda: len(log.read_text().splitlines()) == 7)
            lines = log.read_text().splitlines()
    shown = []
    for line in lines:
        values = line.split("|")
        for index, name in enumerate(LOGGED_VARIABLES):
            if name == "request_id":
                values[index] = "ID" if re.fullmatch("[0-9a-f]{32}", values[index]) else "?"
            elif name.endswith("_time"):
                values[index] = re.sub(r"\d+\.\d{3}", "T", values[index])
        shown.append(values)
    return shown


def test_logged_variables_are_nginx_s() -> None:
    """$upstream_* over a retry, a failed connect and no upstream; $remote_user,
    $connection_requests, $pipe, $request_length, $sent_http_* and absent values as "-"."""
    ports = {"a": free_port(), "dead": free_port()}
    ours, theirs = logged_variables(running_upsync, ports), logged_variables(running_nginx, ports)
    assert len(ours) == len(theirs)
    assert [
        (line, name, mine, nginx)
        for line, (our_values, their_values) in enumerate(zip(ours, theirs, strict=True))
        for name, mine, nginx in zip(LOGGED_VARIABLES, our_values, their_values, strict=True)
        if mine != nginx
    ] == []
    first = dict(zip(LOGGED_VARIABLES, theirs[0], strict=True))
    assert first["upstream_status"] == "502, 200"
    assert first["upstream_connect_time"] == "-, T"


MAP_CONFIG = r"""
worker_processes 1;
events { worker_connections 64; }
http {
    access_log off;
    types { text/plain txt; }
    map $http_upgrade $connection_upgrade { default upgrade; '' close; }
    map $http_x_host $zone {
        hostnames;
        default none;
        example.com exact;
        *.example.com star;
        .example.net dot;
        mail.* tail;
        www.example.* longer-tail;
        "~^(?<label>[a-z]+)\.regex$" "regex $label";
        \default escaped;
    }
    map $arg_v $chosen {
        default "default $uri";
        ABC upper;
        ~^x(\d+)$ "x $1";
        ~*^Y(?<num>\d+)$ "y $num";
        $nested nested-key;
    }
    map $http_x_inner $nested { default inner; }
    server {
        listen 127.0.0.1:PORT;
        server_name ~^(?<who>[a-z]+)\.test$ localhost;
        location /map { return 200 "[$connection_upgrade][$zone][$chosen][$1]\n"; }
        location ~ ^/re/(?<part>[a-z]+)/(\d+)$ { return 200 "[$part][$1][$2][$who]\n"; }
    }
}
"""


def map_answers(runner: Runner) -> list[str]:
    port = free_port()
    asked: list[tuple[str, dict[str, str]]] = [
        ("/map", {}),
        ("/map", {"Upgrade": "websocket"}),
        ("/map", {"X-Host": "example.com"}),
        ("/map", {"X-Host": "EXAMPLE.com."}),
        ("/map", {"X-Host": "a.b.example.com"}),
        ("/map", {"X-Host": "example.net"}),
        ("/map", {"X-Host": "www.example.net"}),
        ("/map", {"X-Host": "mail.example.org"}),
        ("/map", {"X-Host": "www.example.org"}),
        ("/map", {"X-Host": "abc.regex"}),
        ("/map", {"X-Host": "default"}),
        ("/map", {"X-Host": "other.org"}),
        ("/map?v=abc", {}),
        ("/map?v=x42", {}),
        ("/map?v=y7", {}),
        ("/map?v=inner", {}),
        ("/map?v=zzz", {}),
        ("/re/abc/12", {"Host": "bob.test"}),
        ("/re/abc/12", {}),
    ]
    answers = []
    with runner(MAP_CONFIG.replace("PORT", str(port)), port):
        for path, headers in asked:
            status, _, body = request(port, path, headers=headers)
            answers.append(f"{path} {headers} {status} {body.decode()}")
    return answers


def test_map_and_regex_captures_as_nginx_does() -> None:
    """map with hostnames masks, regexes and their captures, escaped keys, a map as a key and
    nested maps; named and positional captures of a location and a server name regex."""
    ours, theirs = map_answers(running_upsync), map_answers(running_nginx)
    assert [(mine, nginx) for mine, nginx in zip(ours, theirs, strict=True) if mine != nginx] == []
    assert "200 [upgrade][none][default /map][]" in theirs[1]


SHAPING_LOCATIONS = """
        location /method { proxy_method PUT; proxy_pass http://backend; }
        location /method-var { proxy_method $arg_m; proxy_pass http://backend; }
        location /no-headers { proxy_pass_request_headers off; proxy_set_header X-Own o; proxy_pass http://backend; }
        location /no-body { proxy_pass_request_body off; proxy_pass http://backend; }
        location /set-body { proxy_set_body "name=$arg_n"; proxy_pass http://backend; }
        location /empty-body { proxy_set_body ""; proxy_pass http://backend; }
        location /no-length { proxy_pass_request_body off; proxy_set_header Content-Length ""; proxy_pass http://backend; }
"""


def shaped_requests(runner: Runner) -> list[tuple[str, str, list[str], bytes]]:
    """What the upstream receives for a POST with a body through each location."""
    from tests.helpers import RawRequest, ScriptedBackend, ok_response

    def scripted(req: RawRequest) -> tuple[bytes, bool]:
        # the body is read unless it is not passed: nginx still says its Content-Length there
        return ok_response(b"up"), not req.path.startswith("/no-body")

    port = free_port()
    with ScriptedBackend(scripted) as backend:
        text = with_locations(port, backend.port, SHAPING_LOCATIONS)
        with runner(text, port):
            for path in ("/method", "/method-var?m=PATCH", "/no-headers", "/no-body",
                         "/set-body?n=x", "/empty-body", "/no-length"):
                status, _, _ = request(
                    port, path, method="POST", body=b"hello", headers={"X-Client": "c"}
                )
                assert status == 200
    seen = []
    for req in backend.requests:
        lines = sorted(
            line.decode("latin-1")
            for line in req.head.split(b"\r\n")[1:]
            if not line.lower().startswith(b"host:")
        )
        seen.append((req.method, req.path, lines, req.body))
    return seen


def test_proxy_method_and_request_shaping_as_nginx_does() -> None:
    """proxy_method (also with a variable), proxy_pass_request_headers off,
    proxy_pass_request_body off, proxy_set_body."""
    ours, theirs = shaped_requests(running_upsync), shaped_requests(running_nginx)
    assert [(mine, nginx) for mine, nginx in zip(ours, theirs, strict=True) if mine != nginx] == []
    assert theirs[0][0] == "PUT" and theirs[4][3] == b"name=x"


def keepalive_time_answer(runner: Runner) -> tuple[float, int, int]:
    """On one keep-alive connection, requests until a response says close: after how long,
    how many, and how many connections the backend saw (pooled upstream: one)."""
    import time

    from tests.helpers import KeepAliveClient

    port = free_port()
    with Backend("a") as backend:
        text = config(port, server(backend)).replace(
            # keepalive_requests raised: a fast loop reaches the default 1000 in under a
            # second, and that limit, not the connection's age, would say close
            "access_log off;",
            "access_log off;\n    keepalive_time 1s;\n    keepalive_requests 1000000;",
        )
        with runner(text, port):
            client = KeepAliveClient(port)
            started = time.monotonic()
            count = 0
            while True:
                count += 1
                status, headers, _ = client.get("/")
                assert status == 200
                if headers.get("connection") == "close":
                    break
                assert time.monotonic() - started < 5, "keepalive_time never closed"
            client.close()
            return time.monotonic() - started, count, status


def test_keepalive_time_ends_a_long_lived_connection_as_nginx_does() -> None:
    for runner in (running_nginx, running_upsync):
        elapsed, count, _ = keepalive_time_answer(runner)
        assert 0.5 <= elapsed < 3.0, (runner.__name__, elapsed)  # nginx: its cached clock
        assert count > 1


ERROR_PAGE_SERVER = """
    server {
        listen 127.0.0.1:PORT;
        error_page 404 /404.html;
        location = /404.html { return 200 "custom 404 $uri $request_uri $request_method\\n"; }
        location /dead {
            error_page 502 504 = @fallback;
            proxy_pass http://127.0.0.1:DEAD;
        }
        location @fallback { return 200 "fallback $request_method $uri\\n"; }
        location /denied { deny all; error_page 403 =418 /teapot; }
        location = /teapot { return 200 "tea\\n"; }
        location /intercepted {
            proxy_intercept_errors on;
            error_page 500 503 /oops;
            error_page 401 /who;
            error_page 404 = @upstream;
            proxy_pass http://127.0.0.1:BACKEND;
        }
        location /passed { error_page 500 /oops; proxy_pass http://127.0.0.1:BACKEND; }
        location = /oops { proxy_pass http://127.0.0.1:BACKEND/fine; }
        location = /who { return 200 "who\n"; }
        location @upstream { proxy_pass http://127.0.0.1:BACKEND; }
        location /away { error_page 404 http://example.com/nf; return 404; }
        location /moved { error_page 404 =301 http://example.com/moved?x=1; return 404; }
        location /twice { error_page 404 /nowhere; return 404; }
        location /args { error_page 404 /404.html?from=args; return 404; }
        location /r302 { error_page 302 /ret302?1; return 302 "first"; }
        location = /ret302 { return 302 "http://example.com/$args"; }
        location /r302auto { error_page 302 /auto; return 302 "first"; }
        location /auto/ { proxy_pass http://127.0.0.1:BACKEND; }
        location /e200 { error_page 404 =200 /fail; return 404; }
        location '/e"<>^`{|}/' { proxy_pass http://127.0.0.1:BACKEND; }
        location = /fail { return 500; }
    }
"""


def error_page_answers(runner: Runner, ports: dict[str, int]) -> list[str]:
    from tests.helpers import RawRequest, ScriptedBackend, ok_response

    def scripted(req: RawRequest) -> tuple[bytes, bool]:
        if req.path.startswith("/intercepted/500"):
            return b"HTTP/1.1 500 Broken\r\nContent-Length: 6\r\n\r\nbroken", True
        if req.path.startswith("/intercepted/401"):
            return (
                b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=x\r\n"
                b"X-Other: y\r\nContent-Length: 4\r\n\r\nnone"
            ), True
        if req.path.startswith(("/intercepted/404", "/passed")):
            code = b"404 Not Found" if "404" in req.path else b"500 Broken"
            return b"HTTP/1.1 " + code + b"\r\nContent-Length: 4\r\n\r\nnone", True
        return ok_response(f"up {req.method} {req.path}".encode()), True

    port = free_port()
    answers = []
    with ScriptedBackend(scripted) as backend:
        servers = (
            ERROR_PAGE_SERVER.replace("PORT", str(port))
            .replace("DEAD", str(ports["dead"]))
            .replace("BACKEND", str(backend.port))
        )
        text = http_config(servers)
        with runner(text, port):
            for method, path in (
                ("GET", "/missing"),
                ("HEAD", "/missing"),
                ("POST", "/dead/x"),
                ("GET", "/denied"),
                ("GET", "/intercepted/500"),
                ("POST", "/intercepted/404"),
                ("GET", "/intercepted/ok"),
                ("GET", "/intercepted/401"),
                ("GET", "/passed"),
                ("GET", "/away"),
                ("GET", "/moved"),
                ("GET", "/twice"),
                ("GET", "/args"),
                ("GET", "/r302"),
                ("GET", "/r302auto"),
                ("GET", "/auto"),
                ("GET", "/auto?x=1"),
                ("GET", "/auto/y"),
                ("GET", "/e200"),
                ("GET", "/e%22%3C%3E%5E%60%7B%7C%7D"),
            ):
                status, headers, body = request(port, path, method=method, body=b"")
                shown = body.decode() if status == 200 or b"nginx" not in body else "<page>"
                if b"<center>" in body:
                    shown = "<page>"  # the built-in page: the server's name differs
                challenge = headers.get("www-authenticate", "-") + headers.get("x-other", "-")
                answers.append(
                    f"{method} {path} {status} {headers.get('location', '-')} {challenge} {shown}".replace(
                        f":{port}/", ":PORT/"
                    )
                )
    return answers


def test_error_page_and_proxy_intercept_errors_as_nginx_does() -> None:
    """error_page to a URI, a named location, an absolute URL, with =, =CODE; a failing error
    page (no recursion); proxy_intercept_errors on and off."""
    ports = {"dead": free_port()}
    ours = error_page_answers(running_upsync, ports)
    theirs = error_page_answers(running_nginx, ports)
    assert [(mine, nginx) for mine, nginx in zip(ours, theirs, strict=True) if mine != nginx] == []
    assert theirs[0] == "GET /missing 404 - -- custom 404 /404.html /missing GET\n"


def cookie_and_body_headers(runner: Runner) -> list[tuple[int, list[str]]]:
    """$upstream_cookie_NAME and $request_body, shown through add_header."""
    from tests.helpers import RawRequest, ScriptedBackend, ok_response

    def scripted(req: RawRequest) -> tuple[bytes, bool]:
        cookies = b"Set-Cookie: a=1; Path=/\r\nSet-Cookie: tc=xyz; HttpOnly\r\n"
        return ok_response(b"up", cookies), True

    location = (
        "add_header X-Cookie-Tc $upstream_cookie_tc; add_header X-Cookie-None "
        "$upstream_cookie_none; add_header X-Body $request_body;"
    )
    port = free_port()
    answers = []
    with ScriptedBackend(scripted) as backend:
        with runner(config(port, f"server 127.0.0.1:{backend.port};", location), port):
            for body in (b"", b"name=value"):
                status, headers, _ = request(port, "/", method="POST", body=body)
                answers.append((status, sorted(f"{k}={v}" for k, v in headers.items() if k.startswith("x-"))))
    return answers


def test_upstream_cookie_and_request_body_variables_as_nginx_does() -> None:
    ours, theirs = cookie_and_body_headers(running_upsync), cookie_and_body_headers(running_nginx)
    assert ours == theirs
    assert "x-cookie-tc=xyz" in theirs[0][1] and "x-body=name=value" in theirs[1][1]


def expires_answers(runner: Runner) -> list[tuple[str, int, str, str, str]]:
    """Cache-Control and Expires (as seconds after Date when not a fixed date, the time of day
    for a daily one), ETag and Last-Modified, per location."""
    from email.utils import parsedate_to_datetime

    from tests.helpers import RawRequest, ScriptedBackend, ok_response

    def scripted(req: RawRequest) -> tuple[bytes, bool]:
        extra = b"Cache-Control: private\r\nCache-Control: x=1\r\nExpires: 0\r\n"
        extra += b'ETag: "up"\r\nLast-Modified: Mon, 28 Sep 1970 06:00:00 GMT\r\n'
        return ok_response(b"up", extra), True

    locations = """
        location /hour { expires 1h; proxy_pass http://backend; }
        location /past { expires -1; proxy_pass http://backend; }
        location /epoch { expires epoch; return 200 "e"; }
        location /max { expires max; return 200 "m"; }
        location /zero { expires 0; return 200 "z"; }
        location /missing { expires 1h; return 404; }
        location /off { expires off; proxy_pass http://backend; }
        location /modified { expires modified 2048; proxy_pass http://backend; }
        location /daily { expires @15h30m33s; return 200 "d"; }
        location /var { expires $arg_e; proxy_pass http://backend; }
        location /varmod { expires modified $arg_e; proxy_pass http://backend; }
        location /etag { add_header ETag '"mine"'; add_header Last-Modified "x"; proxy_pass http://backend; }
        location /noetag { add_header ETag foo; add_header ETag ''; proxy_pass http://backend; }
"""
    paths = (
        *("/hour", "/past", "/epoch", "/max", "/zero", "/missing", "/off", "/", "/modified"),
        *("/daily", "/var?e=epoch", "/var?e=max", "/var?e=off", "/var?e=2048", "/var?e=-5"),
        *("/var?e=@33s", "/var?e=bad", "/var", "/varmod?e=1h", "/varmod?e=epoch", "/etag"),
        "/noetag",
    )
    port = free_port()
    answers = []
    with ScriptedBackend(scripted) as backend:
        text = with_locations(port, backend.port, locations)
        with runner(text, port):
            for path in paths:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                conn.request("GET", path)
                response = conn.getresponse()
                response.read()
                controls = ",".join(response.headers.get_all("Cache-Control") or [])
                expires = response.headers.get("Expires", "-")
                fixed = expires in ("-", "0") or " 1970 " in expires or " 2037 " in expires
                if "@" in path or "daily" in path:
                    expires = expires.split()[4]  # the time of day, whatever the day
                    controls = re.sub(r"\d+", "N", controls)  # seconds to it: they run on
                elif not fixed:
                    date = parsedate_to_datetime(response.headers["Date"])
                    expires = str(round((parsedate_to_datetime(expires) - date).total_seconds()))
                validators = ",".join(
                    f"{name}={response.headers.get(name, '-')}" for name in ("ETag", "Last-Modified")
                )
                answers.append((path, response.status, controls, expires, validators))
                conn.close()
    return answers


def test_expires_as_nginx_does() -> None:
    ours, theirs = expires_answers(running_upsync), expires_answers(running_nginx)
    assert ours == theirs
    assert theirs[0][:3] == ("/hour", 200, "max-age=3600")
    assert theirs[-1][-1] == "ETag=-,Last-Modified=Mon, 28 Sep 1970 06:00:00 GMT"
    assert theirs[8][:4] == ("/modified", 200, "no-cache", "Mon, 28 Sep 1970 06:34:08 GMT")


REWRITE_SERVER = r"""
    server {
        listen 127.0.0.1:PORT;
        set $tier gold;
        if ($http_x_block) { return 403; }
        rewrite ^/old/(.*)$ /new/$1;
        rewrite ^/gone$ /elsewhere permanent;
        location /new/ { return 200 "new $uri $args $tier\n"; }
        location /last/ { rewrite ^/last/(\w+)$ /target/$1 last; return 500; }
        location /target/ { return 200 "target $uri $request_uri\n"; }
        location /break/ {
            rewrite ^/break/(.*)$ /upstream/$1 break;
            proxy_pass http://127.0.0.1:BACKEND/ignored/;
        }
        location /args/ {
            rewrite ^/args/keep$ /new/keep?a=1;
            rewrite ^/args/drop$ /new/drop? last;
            rewrite ^/args/redirect$ /new/redirect?b=2 redirect;
            rewrite ^/args/absolute$ http://example.com/x;
        }
        location /cond/ {
            set $who "$arg_who";
            if ($who = "") { set $who anonymous; }
            if ($http_user_agent ~* "^curl/(?<ver>[0-9.]+)") { return 200 "curl $ver $1\n"; }
            if ($request_method != GET) { return 405; }
            if (-f /etc/hostname) { set $file yes; }
            if (!-d /no/such/dir) { set $dir no; }
            return 200 "cond $who $file $dir\n";
        }
        location /stop/ { set $a 1; break; set $a 2; return 200 "stop $a\n"; }
        location /loop/ { rewrite ^ /loop/again; }
        location /proxied/ { rewrite ^/proxied/(.*)$ /seen/$1?x=y break; proxy_pass http://127.0.0.1:BACKEND; }
    }
"""


def rewrite_answers(runner: Runner) -> list[str]:
    from tests.helpers import RawRequest, ScriptedBackend, ok_response

    def scripted(req: RawRequest) -> tuple[bytes, bool]:
        return ok_response(f"upstream {req.path}".encode()), True

    port = free_port()
    answers = []
    with ScriptedBackend(scripted) as backend:
        servers = REWRITE_SERVER.replace("PORT", str(port)).replace("BACKEND", str(backend.port))
        text = http_config(servers)
        with runner(text, port):
            for method, path, headers in (
                ("GET", "/old/page?q=1", {}),
                ("GET", "/gone?q=1", {}),
                ("GET", "/last/abc", {}),
                ("GET", "/break/x%20y?z=1", {}),
                ("GET", "/args/keep?o=1", {}),
                ("GET", "/args/drop?o=1", {}),
                ("GET", "/args/redirect?o=1", {}),
                ("GET", "/args/absolute?o=1", {}),
                ("GET", "/cond/?who=me", {}),
                ("GET", "/cond/", {}),
                ("GET", "/cond/", {"User-Agent": "curl/8.1.2"}),
                ("POST", "/cond/", {}),
                ("GET", "/stop/", {}),
                ("GET", "/loop/", {}),
                ("GET", "/proxied/a/b", {}),
                ("GET", "/new/x", {"X-Block": "1"}),
            ):
                status, got, body = request(port, path, method=method, headers=headers, body=b"")
                shown = "<page>" if b"<center>" in body else body.decode()
                location = got.get("location", "-").replace(f":{port}/", ":PORT/")
                answers.append(f"{method} {path} {status} {location} {shown}")
    return answers


def test_rewrite_module_as_nginx_does() -> None:
    """set, rewrite (no flag, last, break, redirect, permanent, absolute URL, arguments kept,
    added or dropped), break, return and if (=, !=, ~*, captures, -f, !-d, a variable) at
    server and location level, with the cycle limit."""
    ours, theirs = rewrite_answers(running_upsync), rewrite_answers(running_nginx)
    assert [(mine, nginx) for mine, nginx in zip(ours, theirs, strict=True) if mine != nginx] == []
    assert theirs[0] == "GET /old/page?q=1 200 - new /new/page q=1 gold\n"


def static_answers(runner: Runner, root: str) -> list[str]:
    import hashlib

    port = free_port()
    text = http_config(f"""
    types {{ application/json json; text/html html; }}
    server {{
        listen 127.0.0.1:{port};
        root {root};
        location / {{ }}
        location /alias/ {{ alias {root}/sub/; }}
        location /custom/ {{ index first.html second.html; }}
    }}
""")
    answers = []
    with runner(text, port):
        first = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        first.request("GET", "/x.json")
        response = first.getresponse()
        response.read()
        tag, modified = response.headers["ETag"], response.headers["Last-Modified"]
        first.close()
        for method, path, headers in (
            ("GET", "/", {}),
            ("GET", "/x.json", {}),
            ("HEAD", "/x.json", {}),
            ("GET", "/x.json", {"If-None-Match": tag}),
            ("GET", "/x.json", {"If-Modified-Since": modified}),
            ("GET", "/sub", {}),
            ("GET", "/sub?a=1", {}),
            ("GET", "/sub/", {}),
            ("GET", "/alias/", {}),
            ("GET", "/empty/", {}),
            ("GET", "/nope", {}),
            ("POST", "/x.json", {}),
            ("GET", "/big.bin", {}),
            ("GET", "/custom/", {}),
            ("GET", "/plain", {}),
        ):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request(method, path, headers=headers)
            response = conn.getresponse()
            body = response.read()
            conn.close()
            shown = "<page>" if b"<center>" in body else hashlib.sha1(body).hexdigest()[:8]
            fields = [
                response.headers.get(name, "-").replace(f":{port}/", ":PORT/")
                for name in ("Content-Type", "Content-Length", "Location", "ETag")
            ]
            answers.append(f"{method} {path} {response.status} {' '.join(fields)} {shown}")
    return answers


def test_static_files_as_nginx_does(tmp_path: Path) -> None:
    """root, alias, index (the default and a list), a directory's redirect to its slash,
    types and default_type, conditional GETs, HEAD, a large file, 403/404/405."""
    (tmp_path / "sub").mkdir()
    (tmp_path / "empty").mkdir()
    (tmp_path / "custom").mkdir()
    (tmp_path / "index.html").write_text("hello\n")
    (tmp_path / "sub" / "index.html").write_text("sub\n")
    (tmp_path / "custom" / "second.html").write_text("second\n")
    (tmp_path / "x.json").write_text('{"a": 1}\n')
    (tmp_path / "plain").write_text("plain\n")
    (tmp_path / "big.bin").write_bytes(bytes(range(256)) * 4000)
    ours = static_answers(running_upsync, str(tmp_path))
    theirs = static_answers(running_nginx, str(tmp_path))
    assert [(mine, nginx) for mine, nginx in zip(ours, theirs, strict=True) if mine != nginx] == []
    assert theirs[5].startswith("GET /sub 301 text/html")


NESTED_SERVER = r"""
    server {
        listen 127.0.0.1:PORT;
        location /a/ {
            location /a/b/ { return 200 "ab\n"; }
            location ~ \.txt$ { return 200 "a-txt\n"; }
            location /a/c/ { location ~ \.c$ { return 200 "ac-c\n"; } return 200 "ac\n"; }
            location = /a/exact { return 200 "a-exact\n"; }
            return 200 "a\n";
        }
        location ^~ /n/ { location ~ \.txt$ { return 200 "n-txt\n"; } return 200 "n\n"; }
        location ~ \.txt$ { return 200 "top-txt\n"; }
        location ~ ^/r/ { location ~ \.x$ { return 200 "r-x\n"; } return 200 "r\n"; }
        location /inherit/ {
            add_header X-Parent p;
            location /inherit/child/ { return 200 "child\n"; }
        }
    }
"""


def nested_answers(runner: Runner) -> list[str]:
    port = free_port()
    text = http_config(NESTED_SERVER.replace('PORT', str(port)))
    answers = []
    with runner(text, port):
        for path in (
            "/a/", "/a/b/", "/a/b/f.txt", "/a/x.txt", "/a/c/f.c", "/a/c/f.txt", "/a/c/",
            "/a/exact", "/n/x.txt", "/n/y", "/other.txt", "/r/z.x", "/r/z", "/inherit/child/",
        ):
            status, headers, body = request(port, path)
            answers.append(f"{path} {status} {headers.get('x-parent', '-')} {body.decode()}")
    return answers


def test_nested_locations_are_matched_and_inherit_as_nginx_does() -> None:
    ours, theirs = nested_answers(running_upsync), nested_answers(running_nginx)
    assert [(mine, nginx) for mine, nginx in zip(ours, theirs, strict=True) if mine != nginx] == []
    assert "/a/c/f.txt 200 - a-txt\n" in theirs


def try_files_answers(runner: Runner, root: str) -> list[str]:
    from tests.helpers import RawRequest, ScriptedBackend, ok_response

    def scripted(req: RawRequest) -> tuple[bytes, bool]:
        return ok_response(f"upstream {req.path}".encode()), True

    port = free_port()
    answers = []
    with ScriptedBackend(scripted) as backend:
        text = http_config(f"""
    server {{
        listen 127.0.0.1:{port};
        root {root};
        location / {{ try_files $uri $uri/ @fallback; }}
        location @fallback {{ proxy_pass http://127.0.0.1:{backend.port}; }}
        location /code/ {{ try_files $uri =418; }}
        location /uri/ {{ try_files /nope /page.html?from=uri; }}
        location /kept/ {{ try_files /page.html @fallback; proxy_pass http://127.0.0.1:{backend.port}; }}
    }}
""")
        with runner(text, port):
            for path in ("/page.html", "/dir", "/dir/", "/missing?a=1", "/code/x", "/uri/y",
                         "/kept/z"):
                status, headers, body = request(port, path)
                shown = "<page>" if b"<center>" in body else body.decode()
                location = headers.get("location", "-").replace(f":{port}/", ":PORT/")
                answers.append(f"{path} {status} {location} {shown}")
    return answers


def test_try_files_as_nginx_does(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "index.html").write_text("dir index\n")
    (tmp_path / "page.html").write_text("page\n")
    ours = try_files_answers(running_upsync, str(tmp_path))
    theirs = try_files_answers(running_nginx, str(tmp_path))
    assert [(mine, nginx) for mine, nginx in zip(ours, theirs, strict=True) if mine != nginx] == []
    assert "/missing?a=1 200 - upstream /missing?a=1" in theirs


def cookie_rewrites(runner: Runner) -> list[str]:
    """Set-Cookie as the client gets it, for Domain and Path values the upstream sends."""
    from urllib.parse import parse_qs, quote, urlsplit

    from tests.helpers import RawRequest, ScriptedBackend, ok_response

    def scripted(req: RawRequest) -> tuple[bytes, bool]:
        query = parse_qs(urlsplit(req.path).query)
        cookie = query["raw"][0] if "raw" in query else "c=1"
        if "d" in query:
            cookie += "; Domain=" + query["d"][0]
        if "p" in query:
            cookie += ";path=" + query["p"][0]
        if "raw" not in query:
            cookie += "; HttpOnly"
        return ok_response(b"up", f"Set-Cookie: {cookie}\r\n".encode()), True

    locations = r"""
        location /c/ {
            proxy_cookie_domain app.internal .public.example;
            proxy_cookie_domain .$server_name.lan $server_name.example;
            proxy_cookie_domain ~^(\w+)\.svc$ $1.example;
            proxy_cookie_path /app/ /;
            proxy_cookie_path ~*^/Legacy/(.*)$ /new/$1;
            proxy_pass http://backend;
            location /c/off/ { proxy_cookie_domain off; proxy_cookie_path off; proxy_pass http://backend; }
        }
        location /f/ {
            proxy_cookie_flags a secure httponly samesite=none;
            proxy_cookie_flags B nosecure nohttponly nosamesite;
            proxy_cookie_flags $arg_name samesite=lax;
            proxy_cookie_flags ~^x secure $arg_flag;
            proxy_cookie_path /p /q;
            proxy_pass http://backend;
        }
"""
    port = free_port()
    answers = []
    with ScriptedBackend(scripted) as backend:
        text = with_locations(port, backend.port, locations).replace(
            f"listen 127.0.0.1:{port};", f"listen 127.0.0.1:{port}; server_name localhost;"
        )
        with runner(text, port):
            for query in (
                "d=App.Internal", "d=.app.internal", "d=.localhost.lan", "d=api.SVC",
                "d=other.org", "p=/app/x", "p=/apps", "p=/legacy/a/b", "d=app.internal&p=/app/",
            ):
                for prefix in ("/c/", "/c/off/"):
                    _, headers, _ = request(port, f"{prefix}?{query}")
                    answers.append(f"{prefix}?{query} {headers.get('set-cookie')}")
            for raw, extra in (
                ("a=1", ""),
                ("a=1;  secure ;HttpOnly; SameSite=Strict;path=/p/x", ""),
                ("b=2; Secure; HTTPONLY; SameSite=Lax; Max-Age=5", ""),
                ("c=3; samesite=none", "&name=C"),
                ("c=3; SameSite=Lax", "&name=c"),
                ("xy=4", "&flag=httponly"),
                ("xy=4", "&flag=bogus"),
                ("novalue; Secure", ""),
                ("other=5;path=/p", ""),
            ):
                _, headers, _ = request(port, f"/f/?raw={quote(raw)}{extra}")
                answers.append(f"/f/ {raw}{extra} {headers.get('set-cookie')}")
    return answers


def test_proxy_cookie_domain_path_and_flags_as_nginx_does() -> None:
    ours, theirs = cookie_rewrites(running_upsync), cookie_rewrites(running_nginx)
    assert [(mine, nginx) for mine, nginx in zip(ours, theirs, strict=True) if mine != nginx] == []
    assert "/c/?d=App.Internal c=1; Domain=public.example; HttpOnly" in theirs
    assert "/f/ a=1 a=1; Secure; HttpOnly; SameSite=None" in theirs


TRAILER_LOCATIONS = """
        location /t {
            add_trailer Foo foo;
            add_trailer Foo bar;
            add_trailer X-Sent $sent_trailer_foo;
            add_trailer X-Empty "";
            return 200 "body";
        }
        location /p { add_trailer X-T "$status"; proxy_pass http://backend; }
        location /e { add_trailer X-E e always; add_trailer X-N n; return 404; }
        location /n { add_trailer X-N n; return 404; }
        location /off { chunked_transfer_encoding off; proxy_pass http://backend; }
        location /offt { chunked_transfer_encoding off; add_trailer X-T t; return 200 "b"; }
"""
TRAILER_REQUESTS = [
    b"GET /t HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    b"HEAD /t HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    b"GET /t HTTP/1.0\r\nHost: x\r\n\r\n",
    b"GET /p HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    b"GET /p/close HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    b"GET /e HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    b"GET /n HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    b"GET /off/close HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    b"GET /offt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
]


def trailer_answers(runner: Runner) -> list[str]:
    """Whole answers, Date and Server aside: framing, bodies and trailer lines."""
    from tests.helpers import RawRequest, ScriptedBackend, raw_exchange

    def scripted(req: RawRequest) -> tuple[bytes, bool]:
        if req.path.endswith("/close"):  # a body that ends with the connection
            return b"HTTP/1.0 200 OK\r\nConnection: close\r\n\r\nuntil close", True
        return b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nup", True

    port = free_port()
    answers = []
    with ScriptedBackend(scripted) as backend:
        with runner(with_locations(port, backend.port, TRAILER_LOCATIONS), port):
            for raw in TRAILER_REQUESTS:
                reply = raw_exchange(port, raw, timeout=3).decode("latin-1")
                reply = re.sub(r"(Server|Date): [^\r]*\r\n", "", reply)
                # error pages name their server in the body
                answers.append(re.sub(r"<center>[^<]*</center>", "", reply))
    return answers


def test_add_trailer_and_chunked_transfer_encoding_as_nginx_does() -> None:
    ours, theirs = trailer_answers(running_upsync), trailer_answers(running_nginx)
    # $sent_trailer_foo of two Foo trailers: nginx 1.23 on joins them (nginx-tests'
    # http_headers_multi.t); Debian's 1.22 gives the first alone
    assert theirs[0].endswith("0\r\nFoo: foo\r\nFoo: bar\r\nX-Sent: foo\r\n\r\n")
    theirs[0] = theirs[0].replace("X-Sent: foo\r\n", "X-Sent: foo, bar\r\n")
    assert differing(TRAILER_REQUESTS, ours, theirs) == []


KEEPALIVE_LOCATIONS = """
        location /h { keepalive_timeout 30s 9; return 200 "h"; }
        location /safari { keepalive_disable safari; return 200 "s"; }
        location /none { keepalive_disable none; return 200 "n"; }
        location /r { keepalive_requests 3; return 200 "r"; }
        location = /d { return 200 "d"; }
"""
KEEPALIVE_REQUESTS = [
    ("GET", "/h", ""),
    ("POST", "/d", "Mozilla/4.0 (compatible; MSIE 5.0; Windows 98)"),
    ("POST", "/d", "Mozilla/4.0 (compatible; MSIE 6.0; Windows NT 5.1)"),
    ("POST", "/d", "Mozilla/4.0 (compatible; MSIE 6.0; Windows NT 5.1; SV1)"),
    ("POST", "/d", "Mozilla/4.0 (compatible; MSIE 7.0; Windows NT 6.0)"),
    ("GET", "/d", "Mozilla/4.0 (compatible; MSIE 5.0; Windows 98)"),
    ("POST", "/d", "Opera/9.80 (compatible; MSIE 5.0)"),
    ("GET", "/safari", "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) Safari/605.1.15"),
    ("GET", "/safari", "Mozilla/5.0 (Macintosh; Mac OS X) Chrome/120.0 Safari/537.36"),
    ("GET", "/d", "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) Safari/605.1.15"),
    ("POST", "/none", "Mozilla/4.0 (compatible; MSIE 5.0; Windows 98)"),
]


def keepalive_answers(runner: Runner) -> list[object]:
    """Per request on a fresh connection: its Connection and Keep-Alive headers; then how
    many answers one connection gets in a location with its own keepalive_requests."""
    port = free_port()
    answers: list[object] = []
    with Backend("a") as backend, runner(with_locations(port, backend.port, KEEPALIVE_LOCATIONS), port):
        for method, path, agent in KEEPALIVE_REQUESTS:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            headers = {"User-Agent": agent} if agent else {}
            conn.request(method, path, body=b"" if method == "POST" else None, headers=headers)
            response = conn.getresponse()
            response.read()
            answers.append((response.getheader("Connection"), response.getheader("Keep-Alive")))
            conn.close()
        client = KeepAliveClient(port)
        kept = [client.get("/r")[1].get("connection") for _ in range(3)]
        client.close()
        answers.append(kept)
    return answers


def test_keepalive_disable_header_and_requests_per_location_as_nginx_does() -> None:
    ours, theirs = keepalive_answers(running_upsync), keepalive_answers(running_nginx)
    assert ours == theirs
    assert theirs[0] == ("keep-alive", "timeout=9") and theirs[1] == ("close", None)
    assert theirs[-1] == ["keep-alive", "keep-alive", "close"]


def test_an_error_found_reading_the_request_gets_the_servers_error_page() -> None:
    """A Host nginx refuses is a 400 answered with the default server's settings: its
    error_page, and a redirect made absolute with the address the client came to."""
    from tests.helpers import raw_exchange

    answers = []
    for runner in (running_nginx, running_upsync):
        port = free_port()
        servers = f"""
    server {{
        listen 127.0.0.1:{port};
        server_name first;
        error_page 400 /r301;
        location /r301 {{ return 301 /redirect; }}
    }}
"""
        with runner(http_config(servers), port):
            reply = raw_exchange(port, b"GET / HTTP/1.1\r\nHost: .\r\nConnection: close\r\n\r\n")
            head = reply.partition(b"\r\n\r\n")[0].decode().replace(f":{port}/", ":PORT/")
            answers.append(sorted(line for line in head.split("\r\n") if not line.startswith(("Date", "Server"))))
    assert answers[0] == answers[1]
    assert "Location: http://127.0.0.1:PORT/redirect" in answers[0]


def limit_except_answers(runner: Runner, root: Path) -> list[str]:
    """limit_except with its own rules and inheriting the location's; include inside `if`,
    `limit_except` and `upstream`."""
    port = free_port()
    with Backend("a") as backend:
        (root / "ups.conf").write_text(f"server 127.0.0.1:{backend.port};")
        (root / "lif.conf").write_text("return 200 LIF;")
        (root / "lmt.conf").write_text("deny all;")
        servers = f"""
    upstream included {{ include {root}/ups.conf; }}
    server {{
        listen 127.0.0.1:{port};
        location /get {{ limit_except GET {{ deny all; }} proxy_pass http://included; }}
        location /inherit {{ deny 127.0.0.1; limit_except POST PUT {{ }} return 200 in; }}
        location /inc {{
            if ($arg_l) {{ include {root}/lif.conf; }}
            limit_except GET {{ include {root}/lmt.conf; }}
            return 200 plain;
        }}
    }}
"""
        answers = []
        with runner(http_config(servers), port):
            for method, path in (
                ("GET", "/get"), ("HEAD", "/get"), ("POST", "/get"), ("DELETE", "/get"),
                ("GET", "/inherit"), ("POST", "/inherit"), ("PUT", "/inherit"),
                ("GET", "/inc?l=1"), ("GET", "/inc"), ("POST", "/inc"),
            ):
                status, _, body = request(port, path, method=method, body=b"")
                answers.append(f"{method} {path} {status} {body.decode() if status == 200 else ''}")
    return answers


def test_limit_except_and_include_anywhere_as_nginx_does(tmp_path: Path) -> None:
    ours = limit_except_answers(running_upsync, tmp_path)
    theirs = limit_except_answers(running_nginx, tmp_path)
    assert ours == theirs
    assert theirs[:4] == ["GET /get 200 a\n", "HEAD /get 200 ", "POST /get 403 ", "DELETE /get 403 "]


def accel_redirect_answers(runner: Runner, root: Path) -> list[str]:
    """X-Accel-Redirect to an `internal` location of files, a named location, with arguments,
    unsafe, ignored; the headers kept from the upstream."""
    from tests.helpers import RawRequest, ScriptedBackend

    redirects = {
        "/app/file": "/protected/f.txt",
        "/app/space": "/protected/a%20b.txt",
        "/app/named": "@named",
        "/app/unsafe": "/protected/../f.txt",
        "/app/escaped": "/protected/.%2e/f.txt",
        "/ignored/file": "/protected/f.txt",
    }

    def scripted(req: RawRequest) -> tuple[bytes, bool]:
        target = redirects[req.path.split("?")[0]]
        head = (
            f"HTTP/1.1 200 OK\r\nX-Accel-Redirect: {target}\r\nContent-Type: text/x-kept\r\n"
            "Set-Cookie: s=1\r\nCache-Control: no-store\r\nX-Other: dropped\r\nContent-Length: 2\r\n\r\n"
        )
        return head.encode() + b"up", True

    (root / "f.txt").write_text("file\n")
    (root / "a b.txt").write_text("spaced\n")
    port = free_port()
    answers = []
    with ScriptedBackend(scripted) as backend:
        locations = f"""
        location /app/ {{ proxy_pass http://backend; }}
        location /ignored/ {{ proxy_ignore_headers X-Accel-Redirect; proxy_pass http://backend; }}
        location /protected/ {{ internal; alias {root}/; }}
        location @named {{ return 200 "named $upstream_http_x_accel_redirect $uri $request_method"; }}
"""
        with runner(with_locations(port, backend.port, locations), port):
            for method, path in (
                ("GET", "/protected/f.txt"), ("GET", "/app/file"), ("POST", "/app/file"),
                ("HEAD", "/app/file"), ("GET", "/app/space"), ("POST", "/app/named"),
                ("GET", "/app/unsafe"), ("GET", "/app/escaped"), ("GET", "/ignored/file"),
            ):
                status, headers, body = request(port, path, method=method, body=b"x")
                shown = [f"{name}={headers.get(name, '-')}" for name in ("content-type", "set-cookie", "cache-control", "x-other", "x-accel-redirect")]
                text = body.decode() if status == 200 else ""
                answers.append(f"{method} {path} {status} {' '.join(shown)} {text}")
    return answers


def test_x_accel_redirect_and_internal_locations_as_nginx_does(tmp_path: Path) -> None:
    ours = accel_redirect_answers(running_upsync, tmp_path)
    theirs = accel_redirect_answers(running_nginx, tmp_path)
    assert [(mine, nginx) for mine, nginx in zip(ours, theirs, strict=True) if mine != nginx] == []
    assert theirs[1].startswith("GET /app/file 200 content-type=text/x-kept set-cookie=s=1")


IF_LOCATIONS = """
        location /api/ {
            if ($request_method = OPTIONS) {
                add_header Access-Control-Allow-Origin "*";
                add_header Access-Control-Allow-Methods "GET, POST";
                return 204;
            }
            add_header X-Outer outer;
            proxy_pass http://backend;
        }
        location /hdr/ {
            if ($arg_x) {
                add_header X-If "yes $arg_x";
                set $seen "if";
            }
            proxy_set_header X-Up "outer $seen";
            add_header X-Seen "$seen";
            proxy_pass http://backend;
        }
        location /switch/ {
            if ($arg_to = other) { proxy_pass http://127.0.0.1:OTHER; }
            proxy_pass http://backend;
        }
        location /files/ {
            if ($arg_deny) { return 403; }
            if ($arg_h) { expires 1h; }
            root ROOT;
        }
"""


def if_location_answers(runner: Runner, root: Path) -> list[str]:
    """An `if` with other directives than the rewrite module's, nginx's location of its own:
    the CORS recipe, add_header and proxy_set_header inside, proxy_pass inside, files."""
    from tests.helpers import RawRequest, ScriptedBackend, ok_response

    def scripted(req: RawRequest) -> tuple[bytes, bool]:
        return ok_response(f"main {req.path} up={req.header('x-up')}".encode()), True

    def other(req: RawRequest) -> tuple[bytes, bool]:
        return ok_response(f"other {req.path}".encode()), True

    (root / "files").mkdir(exist_ok=True)
    (root / "files" / "a.txt").write_text("file\n")
    port = free_port()
    answers = []
    with ScriptedBackend(scripted) as backend, ScriptedBackend(other) as second:
        locations = IF_LOCATIONS.replace("OTHER", str(second.port)).replace("ROOT", str(root))
        with runner(with_locations(port, backend.port, locations), port):
            for method, path in (
                ("OPTIONS", "/api/x"), ("GET", "/api/x"), ("GET", "/hdr/a?x=1"), ("GET", "/hdr/b"),
                ("GET", "/switch/c?to=other"), ("GET", "/switch/d"), ("GET", "/files/a.txt?h=1"),
                ("GET", "/files/a.txt"), ("GET", "/files/a.txt?deny=1"),
            ):
                status, headers, body = request(port, path, method=method)
                shown = " ".join(
                    f"{name}={headers.get(name, '-')}"
                    for name in ("access-control-allow-origin", "access-control-allow-methods",
                                 "x-outer", "x-if", "x-seen", "cache-control", "content-type",
                                 "content-length")
                )
                text = "<page>" if b"<center>" in body else body.decode(errors="replace")
                answers.append(f"{method} {path} {status} {shown} {text}")
    return answers


def test_if_with_other_directives_is_a_location_as_nginx_builds_it(tmp_path: Path) -> None:
    ours = if_location_answers(running_upsync, tmp_path)
    theirs = if_location_answers(running_nginx, tmp_path)
    assert [(mine, nginx) for mine, nginx in zip(ours, theirs, strict=True) if mine != nginx] == []
    assert theirs[0].startswith("OPTIONS /api/x 204 access-control-allow-origin=* ")
    assert "content-type=- content-length=-" in theirs[0]  # a 204 has neither
