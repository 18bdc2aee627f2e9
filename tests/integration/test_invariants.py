"""The invariant behind the response-integrity fixes, checked over seeded random traffic: the
upstream sees exactly the requests the client sent (no trailer turned header, no body turned
request), the client sees exactly one response per request, in order, and a connection that
carried a bad response is never handed to the next request."""

import random
import socket
from collections.abc import Iterator

import pytest

from tests.helpers import (
    RawRequest,
    Reply,
    ScriptedBackend,
    free_port,
    keepalive_proxy_config,
    ok_response,
    running_upsync,
)

INJECTED = b"HTTP/1.1 200 OK\r\nSet-Cookie: stolen=1\r\nContent-Length: 8\r\n\r\ninjected"
# how the backend answers, chosen per request: mostly well, sometimes with bytes after the end
BEHAVIOURS = ["ok"] * 6 + ["extra", "garbage", "nocontent", "head_body"]


def backend_reply(req: RawRequest) -> Reply:
    _, _, number, behaviour = req.path.split("/")
    tag = f"id={number}".encode()
    if behaviour == "extra":
        return ok_response(tag) + INJECTED, True
    if behaviour == "garbage":
        return ok_response(tag) + b"\x00\x01garbage\r\n\r\n", True
    if behaviour == "nocontent":
        return b"HTTP/1.1 204 No Content\r\n\r\n" + INJECTED, True
    if behaviour == "head_body":  # a HEAD answered with a body, then another response
        return ok_response(tag) + INJECTED, True
    return ok_response(tag), True


def chunked(body: bytes, rng: random.Random, trailer: bool) -> bytes:
    out = b""
    at = 0
    while at < len(body):
        step = rng.randint(1, 700)
        piece = body[at : at + step]
        out += b"%x\r\n%s\r\n" % (len(piece), piece)
        at += step
    out += b"0\r\n"
    if trailer:
        out += b"X-Id: forged\r\nAuthorization: forged\r\n"
    return out + b"\r\n"


def make_request(number: int, rng: random.Random) -> tuple[bytes, bytes, str]:
    behaviour = rng.choice(BEHAVIOURS)
    method = "HEAD" if behaviour == "head_body" else rng.choice(["GET", "POST", "PUT"])
    sizes = [0] if method == "HEAD" else [0, 0, 5, 300, 5000]
    body = bytes(rng.randrange(256) for _ in range(rng.choice(sizes)))
    head = f"{method} /r/{number}/{behaviour} HTTP/1.1\r\nHost: x\r\nX-Id: {number}\r\n"
    if body and rng.random() < 0.5:
        raw = head.encode() + b"Transfer-Encoding: chunked\r\n\r\n"
        raw += chunked(body, rng, trailer=rng.random() < 0.5)
    elif body or method in ("POST", "PUT"):
        raw = head.encode() + b"Content-Length: %d\r\n\r\n" % len(body) + body
    else:
        raw = head.encode() + b"\r\n"
    return raw, body, behaviour


def read_response(
    reader: Iterator[bytes], pending: bytearray, head_only: bool
) -> tuple[int, bytes]:
    while b"\r\n\r\n" not in pending:
        pending += next(reader)
    head, _, rest = bytes(pending).partition(b"\r\n\r\n")
    pending[:] = rest
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.lower() == b"content-length":
            length = int(value)
    if head_only:
        length = 0
    while len(pending) < length:
        pending += next(reader)
    body = bytes(pending[:length])
    del pending[:length]
    return status, body


def receiving(sock: socket.socket) -> Iterator[bytes]:
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError("connection closed early")
        yield chunk


@pytest.mark.parametrize("seed", range(4))
def test_one_response_per_request_and_exact_requests_upstream(seed: int) -> None:
    rng = random.Random(seed)
    port = free_port()
    with ScriptedBackend(backend_reply) as backend:
        text = keepalive_proxy_config(backend.port, port)
        with running_upsync(text, port):
            sent: dict[str, bytes] = {}
            number = 0
            for _ in range(3):  # a few client connections
                with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                    reader, pending = receiving(sock), bytearray()
                    for _ in range(6):  # bursts of pipelined requests
                        burst = []
                        for _ in range(rng.randint(1, 4)):
                            raw, body, behaviour = make_request(number, rng)
                            sent[str(number)] = body
                            burst.append((number, behaviour))
                            sock.sendall(raw)
                            number += 1
                        for sent_number, behaviour in burst:
                            head_only = behaviour == "head_body"
                            status, body = read_response(reader, pending, head_only)
                            if behaviour == "nocontent" or head_only:
                                assert (status, body) == (204 if not head_only else 200, b"")
                            else:
                                assert (status, body) == (200, f"id={sent_number}".encode())
            received = {req.header("x-id"): req for req in backend.requests}
            assert sorted(received, key=int) == sorted(sent, key=int)  # each exactly once
            assert len(backend.requests) == len(sent)
            for key, req in received.items():
                assert req.body == sent[key or ""]
                assert b"forged" not in req.head
