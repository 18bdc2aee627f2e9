"""A request body kept for sending (and re-sending on a retry): in memory up to
client_body_buffer_size, then in a temporary file in client_body_temp_path, as nginx keeps it.
Memory per connection stays bounded whatever the body's size.

client_body_in_file_only puts every body in a named file there (`on` keeps it after the
request, `clean` removes it); a streamed body (proxy_request_buffering off) is only recorded,
in memory while it fits, for $request_body."""

import os
import tempfile
from typing import IO


class RequestBody:
    __slots__ = ("chunks", "file", "file_only", "memory_limit", "size", "temp_dir")

    def __init__(self, memory_limit: int, temp_dir: str, file_only: str = "off") -> None:
        self.memory_limit = memory_limit
        self.temp_dir = temp_dir
        self.file_only = file_only  # client_body_in_file_only: off, on, clean
        self.chunks: list[bytes] = []
        self.file: IO[bytes] | None = None
        self.size = 0

    @property
    def spooled(self) -> bool:
        return self.file is not None

    def append(self, data: bytes) -> None:
        self.size += len(data)
        if self.file is not None:
            self.file.write(data)
            return
        self.chunks.append(data)
        if self.size > self.memory_limit or self.file_only != "off":
            self._spill()

    def record(self, data: bytes) -> None:
        """A part of a streamed body, already sent on: kept only while the whole body fits
        in memory, for $request_body (nginx's variable is empty past its buffer too)."""
        self.size += len(data)
        if self.file is not None:
            self.file.write(data)  # client_body_in_file_only: the file holds it all
        elif self.size <= self.memory_limit:
            self.chunks.append(data)
        elif self.chunks:
            self.chunks = []

    @property
    def held(self) -> bool:
        """The whole body is still here (in memory or in its file), so it can be sent again."""
        return self.file is not None or self.size <= self.memory_limit

    @property
    def in_memory_whole(self) -> bool:
        """The whole body is held in memory (what $request_body shows)."""
        return self.file is None and self.size <= self.memory_limit

    @property
    def file_name(self) -> str:
        """$request_body_file: the file's name, when client_body_in_file_only names one."""
        name = getattr(self.file, "name", "") if self.file_only != "off" else ""
        return name if isinstance(name, str) else ""

    def _spill(self) -> None:
        os.makedirs(self.temp_dir, exist_ok=True)
        if self.file_only == "off":
            # unlinked at once: nothing is left behind whatever happens to the process
            self.file = tempfile.TemporaryFile(  # noqa: SIM115 - lives as long as the request
                dir=self.temp_dir, prefix="upsync-body-"
            )
        else:
            # named, for $request_body_file; `on` leaves it for whoever reads it later
            self.file = tempfile.NamedTemporaryFile(  # noqa: SIM115 - as long as the request
                dir=self.temp_dir, prefix="upsync-body-", delete=self.file_only == "clean"
            )
        self.file.write(b"".join(self.chunks))
        self.chunks = []

    def in_memory(self) -> bytes:
        """The whole body, when it was not spooled."""
        chunks = self.chunks
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def rewind(self) -> None:
        if self.file is not None:
            self.file.flush()
            self.file.seek(0)

    def read(self, size: int) -> bytes:
        """The next block of a spooled body, after rewind(); b"" at its end."""
        assert self.file is not None
        return self.file.read(size)

    def take(self) -> bytes:
        """Everything held so far (a body that starts streaming); what is in memory stays
        recorded for $request_body, a file is closed."""
        if self.file is not None:
            self.rewind()
            data = self.file.read()
            if self.file_only == "off":
                self.file.close()
                self.file = None
                self.size = self.memory_limit + 1  # no longer held whole
        else:
            data = self.in_memory()
        return data

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None
        self.chunks = []
