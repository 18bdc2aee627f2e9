"""A request body kept for sending (and re-sending on a retry): in memory up to
client_body_buffer_size, then in a temporary file in client_body_temp_path, as nginx keeps it.
Memory per connection stays bounded whatever the body's size."""

import os
import tempfile
from typing import IO


class RequestBody:
    __slots__ = ("chunks", "file", "memory_limit", "size", "temp_dir")

    def __init__(self, memory_limit: int, temp_dir: str) -> None:
        self.memory_limit = memory_limit
        self.temp_dir = temp_dir
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
        if self.size > self.memory_limit:
            self._spill()

    def _spill(self) -> None:
        os.makedirs(self.temp_dir, exist_ok=True)
        # unlinked at once: nothing is left behind whatever happens to the process
        self.file = tempfile.TemporaryFile(  # noqa: SIM115 - lives as long as the request
            dir=self.temp_dir, prefix="upsync-body-"
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
        """Everything held so far, emptied out (a body that starts streaming)."""
        if self.file is not None:
            self.rewind()
            data = self.file.read()
            self.file.close()
            self.file = None
        else:
            data = self.in_memory()
            self.chunks = []
        return data

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None
        self.chunks = []
