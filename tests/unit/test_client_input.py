import pytest

from upsync.proxy.client import bare_cr_in_head


@pytest.mark.parametrize(
    ("data", "bare"),
    [
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", False),
        (b"GET / HTTP/1.0\nHost: x\n\n", False),  # bare LF: accepted, as nginx does
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\nbinary\rbody", False),  # a CR in the body is data
        (b"GET / HTTP/1.1\r\nHost: x\r\n", False),  # head not finished yet
        (b"GET / HTTP/1.1\r\nX: 1\rTransfer-Encoding: chunked\r\n\r\n", True),
        (b"GET / HTTP/1.1\rHost: x\r\n\r\n", True),
    ],
)
def test_bare_cr_in_head(data: bytes, bare: bool) -> None:
    assert bare_cr_in_head(data) is bare
