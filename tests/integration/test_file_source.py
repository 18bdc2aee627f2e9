"""upsync_type=file: a file (or directory) in the dump format, watched; edits apply live."""

from pathlib import Path

from tests.helpers import free_port, running_upsync, wait_until
from tests.integration.test_discovery import config, show, wait_show


def test_edits_to_a_file_apply_live(tmp_path: Path) -> None:
    servers = tmp_path / "servers.conf"
    servers.write_text("server 127.0.0.1:8001 weight=2;\n")
    port = free_port()
    line = f"upsync {servers} upsync_type=file;"
    with running_upsync(config(port, line, tmp_path / "dump.conf"), port) as proc:
        wait_show(port, "server 127.0.0.1:8001 weight=2 max_fails=1 fail_timeout=10s;")
        servers.write_text(
            "# comment\nserver 127.0.0.1:8001 weight=2;\nserver 127.0.0.1:8002 down;\n"
        )
        wait_show(
            port,
            "server 127.0.0.1:8002 weight=1 max_fails=1 fail_timeout=10s down;",
            "server 127.0.0.1:8001 weight=2 max_fails=1 fail_timeout=10s;",
        )
        # replaced by rename (how editors and `mv` save): still noticed
        replacement = tmp_path / "new.tmp"
        replacement.write_text("server 127.0.0.1:8003;\nserver oops;\n")
        replacement.rename(servers)
        wait_show(port, "server 127.0.0.1:8003 weight=1 max_fails=1 fail_timeout=10s;")
        assert "ignored" in (proc.workdir / "error.log").read_text()


def test_a_directory_of_files(tmp_path: Path) -> None:
    directory = tmp_path / "servers.d"
    directory.mkdir()
    (directory / "a.conf").write_text("server 127.0.0.1:8001;\n")
    port = free_port()
    with running_upsync(
        config(port, f"upsync {directory} upsync_type=file;", tmp_path / "d.conf"), port
    ):
        wait_until(lambda: "127.0.0.1:8001" in show(port))
        (directory / "b.conf").write_text("server 127.0.0.1:8002;\n")
        wait_until(lambda: "127.0.0.1:8002" in show(port))
        (directory / "a.conf").unlink()
        wait_until(lambda: "127.0.0.1:8001" not in show(port))
