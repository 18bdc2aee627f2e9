"""The dump file: the server list in nginx-upsync-module's format, written atomically so a crash
never leaves it torn or empty, and read back when upsync starts without its registry."""

import contextlib
import os
import tempfile
from collections.abc import Sequence

from upsync.config.model import ServerSpec
from upsync.units import format_seconds


def server_line(spec: ServerSpec) -> str:
    line = (
        f"server {spec.name} weight={spec.weight} max_fails={spec.max_fails} "
        f"fail_timeout={format_seconds(spec.fail_timeout)}"
    )
    if spec.max_conns:
        line += f" max_conns={spec.max_conns}"
    if spec.backup:
        line += " backup"
    if spec.down:
        line += " down"
    return line + ";"


def format_dump(specs: Sequence[ServerSpec]) -> str:
    return "".join(server_line(spec) + "\n" for spec in specs)


def write_dump(path: str, specs: Sequence[ServerSpec]) -> None:
    """Temporary file in the same directory, fsync, rename: readers see the old or the new list."""
    if not specs:
        return  # an empty dump would start the next run with no servers
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=".upsync-", dir=directory)
    try:
        with os.fdopen(handle, "w") as out:
            out.write(format_dump(specs))
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def read_dump(path: str) -> str | None:
    try:
        with open(path, "rb") as handle:
            # a byte that is not UTF-8 spoils its own line, never the whole file
            return handle.read().decode("utf-8", errors="surrogateescape")
    except FileNotFoundError:
        return None
