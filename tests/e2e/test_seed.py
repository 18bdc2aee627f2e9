"""The seed document's walk-through (OpenResty + nginx-upsync-module + etcd), run against upsync:
its etcdctl commands, its configuration (paths and ports adjusted), its curl, its dump file."""

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

from tests.helpers import Backend, free_port, request, running_upsync, wait_until
from tests.registries import Etcd, http


def etcdctl(etcd: Etcd, *args: str) -> str:
    binary = Path(sys.executable).parent / "etcdctl"
    env = {**os.environ, "ETCDCTL_API": "2", "ETCDCTL_ENDPOINTS": f"http://{etcd.address}"}
    result = subprocess.run(
        [str(binary), *args], env=env, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_seed_walkthrough(tmp_path: Path) -> None:
    etcd = Etcd().start()
    try:
        with Backend("8001") as first, Backend("8002") as second:
            # $ etcdctl set upstreams/127.0.0.1:8001 '{"server": "127.0.0.1:8001"}'
            for backend in (first, second):
                etcdctl(
                    etcd,
                    "set",
                    f"upstreams/127.0.0.1:{backend.port}",
                    f'{{"server": "127.0.0.1:{backend.port}"}}',
                )
            # $ curl http://127.0.0.1:2379/v2/keys/upstreams/
            status, body = http("GET", f"http://{etcd.address}/v2/keys/upstreams/")
            assert status == 200 and f"127.0.0.1:{first.port}".encode() in body

            port = free_port()
            dump = tmp_path / "conf" / "servers" / "servers_test.conf"
            seed_config = f"""
load_module modules/ngx_http_upsync_module.so;

events {{
    worker_connections  1024;
}}

http {{
upstream test {{
    server localhost:8003 ;
    upsync {etcd.address}/v2/keys/upstreams/ upsync_timeout=6m upsync_interval=500ms upsync_type=etcd strong_dependency=off;
    upsync_dump_path {dump};
}}

server {{
    listen       127.0.0.1:{port};
    server_name  localhost;

    location / {{
        proxy_pass http://test;
    }}

    location /upstream_list {{
        upstream_show;
    }}
}}
}}
"""
            with running_upsync(seed_config, port) as proc:
                # $ curl localhost/upstream_list
                status, _, listing = request(port, "/upstream_list")
                assert status == 200
                # etcd's keys in key order (the ports are picked at run time)
                lines = [
                    f"server 127.0.0.1:{p} weight=1 max_fails=2 fail_timeout=10s;\n"
                    for p in sorted((str(first.port), str(second.port)))
                ]
                assert listing.decode() == (
                    "Upstream name: test; Backend server count: 2\n"
                    + "".join("        " + line for line in lines)
                    + "\n"
                )
                # servers_test.conf, and `server localhost:8003` no longer used
                expected_dump = "".join(lines)
                wait_until(lambda: dump.read_text() == expected_dump)
                served = Counter(request(port, "/")[2] for _ in range(10))
                assert served == {b"8001\n": 5, b"8002\n": 5}
                assert "load_module" in (proc.workdir / "error.log").read_text()

                # scaling down is one etcdctl command, no reload
                etcdctl(etcd, "rm", f"upstreams/127.0.0.1:{second.port}")
                wait_until(lambda: b"Backend server count: 1" in request(port, "/upstream_list")[2])
                assert {request(port, "/")[2] for _ in range(4)} == {b"8001\n"}
    finally:
        etcd.close()
