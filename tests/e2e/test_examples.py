"""The shipped examples load, and the quick start does what the README says."""

import shutil
import subprocess
import sys
from pathlib import Path

from tests.helpers import ROOT, free_port, request, running_upsync, wait_until


def test_examples_pass_config_test() -> None:
    for example in ("quickstart.conf", "seed.conf"):
        result = subprocess.run(
            [sys.executable, "-m", "upsync", "-t", "-c", str(ROOT / "examples" / example)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == 0, result.stderr


def test_quickstart_round_robin_and_live_file_edit(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    ports = {str(fixed): str(free_port()) for fixed in (8080, 8081, 8082, 8083)}
    servers = tmp_path / "examples" / "servers" / "backend.conf"
    config = (tmp_path / "examples" / "quickstart.conf").read_text()
    config = config.replace("upsync servers/backend.conf", f"upsync {servers}")
    config = config.replace("/tmp/upsync-quickstart", str(tmp_path / "dump"))
    listing = servers.read_text()
    for fixed, free in ports.items():  # the example's ports, moved to free ones
        config = config.replace(f"127.0.0.1:{fixed}", f"127.0.0.1:{free}")
        listing = listing.replace(f"127.0.0.1:{fixed}", f"127.0.0.1:{free}")
    servers.write_text(listing)
    port = int(ports["8080"])
    with running_upsync(config, port):
        seen = [request(port, "/")[2] for _ in range(3)]
        assert seen == [b"backend A\n", b"backend B\n", b"backend A\n"]  # weight 2 for A
        servers.write_text(listing + f"server 127.0.0.1:{ports['8083']};\n")
        wait_until(
            lambda: f"127.0.0.1:{ports['8083']}".encode() in request(port, "/upstream_show")[2]
        )
        assert b"backend C" in b"".join(request(port, "/")[2] for _ in range(4))
