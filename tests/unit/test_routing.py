import pytest

from upsync.config import load_config
from upsync.proxy.routing import ServerTable, normalize_path, request_host

CONFIG = """
events {}
http {
    server {
        listen 8080;
        server_name _;
        location / { return 200 "root"; }
        location /images/ { return 200 "images"; }
        location ^~ /static/ { return 200 "static"; }
        location = /exact { return 200 "exact"; }
        location ~* \\.(gif|jpg)$ { return 200 "regex"; }
        location ~ ^/api/v[0-9]+ { return 200 "api"; }
    }
    server { listen 8080; server_name example.com www.example.com; location / { return 200 "example"; } }
    server { listen 8080; server_name *.example.org; location / { return 200 "wild-head"; } }
    server { listen 8080; server_name mail.*; location / { return 200 "wild-tail"; } }
    server { listen 8080; server_name ~^(?P<x>\\w+)\\.regex\\.net$; location / { return 200 "regex-name"; } }
    server { listen 8080; server_name ~^UPPER\\.TEST$; location / { return 200 "caseless"; } }
    server { listen 8080; server_name "~^(?<n>v\\p{N}+)\\.pcre\\.net$"; location / { return 200 "pcre"; } }
    server { listen 8080; server_name .dot.test; location / { return 200 "dot"; } }
    server { listen 8080 default_server; server_name default.test; location / { return 200 "default"; } }
}
"""


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory) -> ServerTable:
    path = tmp_path_factory.mktemp("routing") / "nginx.conf"
    path.write_text(CONFIG)
    config = load_config(str(path))
    return ServerTable(config.servers, 8080, "")


def answer(table: ServerTable, host: str, path: str) -> str:
    location = table.find(host).locations.match(path)
    handler = location.handler
    return handler.text.text if handler is not None and handler.text is not None else "404"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/", "root"),
        ("/exact", "exact"),
        ("/exact/more", "root"),
        ("/images/a.png", "images"),
        ("/images/a.gif", "regex"),  # regex beats a plain prefix
        ("/static/a.gif", "static"),  # ^~ stops the regex search
        ("/api/v2/users", "api"),
        ("/IMG.JPG", "regex"),  # ~* is case-insensitive
    ],
)
def test_location_matching_follows_nginx(table: ServerTable, path: str, expected: str) -> None:
    assert answer(table, "_", path) == expected


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("example.com", "example"),
        ("www.example.com", "example"),
        ("a.example.org", "wild-head"),
        ("mail.example.net", "wild-tail"),
        ("x.regex.net", "regex-name"),
        ("unknown.test", "default"),
        ("upper.test", "caseless"),  # a regex name ignores case, as nginx compiles it
        ("v٣.pcre.net", "pcre"),  # PCRE's \p{N}: any Unicode digit
        ("vx.pcre.net", "default"),
        ("a.dot.test", "dot"),
        ("dot.test", "dot"),
    ],
)
def test_server_name_selection(table: ServerTable, host: str, expected: str) -> None:
    assert answer(table, host, "/") == expected


def test_server_name_variable_drops_the_dot_of_a_dotted_name(table: ServerTable) -> None:
    assert table.find("a.dot.test").name == "dot.test"
    assert table.find("a.example.org").name == "*.example.org"


@pytest.mark.parametrize(
    ("raw", "normalized"),
    [
        ("/a/b", "/a/b"),
        ("/a//b", "/a/b"),
        ("/a/./b", "/a/b"),
        ("/a/../b", "/b"),
        ("/a/%2e%2e/b", "/b"),
        ("/a%20b", "/a b"),
        ("/a/", "/a/"),
        ("/..", None),
        ("/a/../../b", None),
        ("a", None),
        ("/a%", None),  # "%" without two hex digits: nginx's 400
        ("/a%1", None),
        ("/a%zz", None),
        ("/a%7e%7E", "/a~~"),
    ],
)
def test_normalize_path(raw: str, normalized: str | None) -> None:
    assert normalize_path(raw) == normalized


def test_split_host() -> None:
    assert request_host("Example.COM:8080") == "example.com"
    assert request_host("[::1]:80") == "[::1]"
    assert request_host("example.com.") == "example.com"
    assert request_host("a\\b") == "a\\b"  # nginx on Unix takes a backslash
    for refused in ("", ".", "..", "a..b", "a/b", "x:8..0", "a b", "a\x7f", ":80"):
        assert request_host(refused) is None, refused
