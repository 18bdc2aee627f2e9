"""Consul beyond KV: catalog services and health (the API double, or a real agent given
CONSUL_HTTP_ADDR), and ACL tokens, datacenters, https with client certificates, which need an
agent configured for them and so run against the double only."""

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.consul_double import ConsulDouble, register_service
from tests.helpers import free_port, running_upsync, wait_until
from tests.integration.test_discovery import config, listing, show, status_json, wait_show
from tests.registries import ConsulKVDriver


@pytest.fixture
def double() -> Iterator[ConsulDouble]:
    server = ConsulDouble().start()
    yield server
    server.stop()


def test_catalog_services_with_tags(consul: str, tmp_path: Path) -> None:
    port = free_port()
    web = f"web{os.getpid()}"
    register_service(consul, web, f"{web}-1", 8001, ["weight=3", "max_fails=5", "fail_timeout=20s"])
    register_service(consul, web, f"{web}-2", 8002, ["backup", "http"], address="127.0.0.2")
    line = (
        f"upsync {consul}/v1/catalog/service/{web} upsync_type=consul_services upsync_timeout=20s;"
    )
    with running_upsync(config(port, line, tmp_path / "d.conf"), port):
        wait_show(
            port,
            "server 127.0.0.1:8001 weight=3 max_fails=5 fail_timeout=20s;",
            "server 127.0.0.2:8002 weight=1 max_fails=2 fail_timeout=10s backup;",
        )
        register_service(consul, web, f"{web}-3", 8003, ["down"])
        wait_until(
            lambda: (
                "server 127.0.0.1:8003 weight=1 max_fails=2 fail_timeout=10s down;" in show(port)
            )
        )


def test_health_marks_critical_instances_down(consul: str, tmp_path: Path) -> None:
    port = free_port()
    api = f"api{os.getpid()}"
    register_service(consul, api, f"{api}-1", 8001)
    register_service(consul, api, f"{api}-2", 8002, status="critical")
    line = f"upsync {consul}/v1/health/service/{api} upsync_type=consul_health upsync_timeout=20s;"
    with running_upsync(config(port, line, tmp_path / "d.conf"), port):
        wait_show(
            port,
            "server 127.0.0.1:8001 weight=1 max_fails=2 fail_timeout=10s;",
            "server 127.0.0.1:8002 weight=1 max_fails=2 fail_timeout=10s down;",
        )
        register_service(consul, api, f"{api}-2", 8002, status="passing")
        wait_until(lambda: "8002 weight=1 max_fails=2 fail_timeout=10s;\n" in show(port))


def test_acl_token_from_directive_and_environment(tmp_path: Path) -> None:
    double = ConsulDouble(token="s3cret").start()
    try:
        driver = ConsulKVDriver(double.address, "upstreams/acl", token="s3cret")
        driver.put("127.0.0.1:8001")
        port = free_port()
        with running_upsync(
            config(port, driver.upsync("upsync_token=s3cret"), tmp_path / "a.conf"), port
        ):
            wait_show(port, "server 127.0.0.1:8001 weight=1 max_fails=2 fail_timeout=10s;")
        # a wrong token: the registry refuses, upsync says so and keeps its static list
        with running_upsync(
            config(port, driver.upsync("upsync_token=wrong"), tmp_path / "b.conf"), port
        ) as proc:
            assert show(port) == listing(
                "server 127.0.0.1:9 weight=1 max_fails=1 fail_timeout=10s;"
            )
            assert "ACL token" in (proc.workdir / "error.log").read_text()
        assert double.state.requests  # the double saw the token-bearing requests
    finally:
        double.stop()


def test_datacenter_and_consistency_are_sent(double: ConsulDouble, tmp_path: Path) -> None:
    driver = ConsulKVDriver(double.address, "upstreams/dc")
    driver.put("127.0.0.1:8001")
    port = free_port()
    line = driver.upsync("upsync_dc=dc1 upsync_consistency=consistent")
    with running_upsync(config(port, line, tmp_path / "d.conf"), port):
        wait_show(port, "server 127.0.0.1:8001 weight=1 max_fails=2 fail_timeout=10s;")
        assert any("dc=dc1" in path and "consistent" in path for path in double.state.requests)
    bad = driver.upsync("upsync_dc=elsewhere")
    with running_upsync(config(port, bad, tmp_path / "e.conf"), port):
        assert status_json(port)["reachable"] is False


def test_blocking_queries_carry_the_index(double: ConsulDouble, tmp_path: Path) -> None:
    driver = ConsulKVDriver(double.address, "upstreams/blocking")
    driver.put("127.0.0.1:8001")
    port = free_port()
    with running_upsync(config(port, driver.upsync(), tmp_path / "d.conf"), port):
        wait_show(port, "server 127.0.0.1:8001 weight=1 max_fails=2 fail_timeout=10s;")
        driver.put("127.0.0.1:8002")
        wait_until(lambda: "8002" in show(port))
        blocking = [p for p in double.state.requests if "index=" in p]
        assert blocking and all("wait=" in p for p in blocking)
        state = status_json(port)
        assert state["last_index"] == str(double.state.kv_index("upstreams/blocking/", True))
        assert json.dumps(state["registry"])  # type and address are reported


def test_https_registry_with_client_certificate(tmp_path: Path) -> None:
    from tests.consul_double import make_certificates

    server_tls, client_tls = make_certificates(tmp_path)
    double = ConsulDouble(tls=server_tls).start()
    try:
        double.state.kv["upstreams/tls/127.0.0.1:8001"] = (b'{"weight":7}', 2, 2)
        port = free_port()
        line = (
            f"upsync https://{double.address}/v1/kv/upstreams/tls upsync_type=consul upsync_timeout=20s "
            f"upsync_ssl_trusted_certificate={client_tls.ca} upsync_ssl_certificate={client_tls.cert} "
            f"upsync_ssl_certificate_key={client_tls.key};"
        )
        with running_upsync(config(port, line, tmp_path / "d.conf"), port):
            wait_show(port, "server 127.0.0.1:8001 weight=7 max_fails=2 fail_timeout=10s;")
        # without the client certificate the registry refuses the connection
        line = f"upsync https://{double.address}/v1/kv/upstreams/tls upsync_ssl_trusted_certificate={client_tls.ca};"
        with running_upsync(config(port, line, tmp_path / "e.conf"), port):
            assert status_json(port)["reachable"] is False
    finally:
        double.stop()


def test_acl_token_from_consul_http_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    double = ConsulDouble(token="from-env").start()
    try:
        driver = ConsulKVDriver(double.address, "upstreams/envtoken", token="from-env")
        driver.put("127.0.0.1:8001")
        monkeypatch.setenv("CONSUL_HTTP_TOKEN", "from-env")
        port = free_port()
        with running_upsync(config(port, driver.upsync(), tmp_path / "d.conf"), port):
            wait_show(port, "server 127.0.0.1:8001 weight=1 max_fails=2 fail_timeout=10s;")
    finally:
        double.stop()
