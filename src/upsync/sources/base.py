"""What every registry source shares: the endpoint list tried in turn, one HTTP session, and the
contract: `watch()` reads the whole list, reports it, then blocks on the registry's own change
notification and reports each new complete list; it raises RegistryError when the registry
cannot be used, and the caller retries."""

import ssl
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import aiohttp

from upsync.config.upsync import SyncSpec
from upsync.sources.entries import Snapshot

OnSnapshot = Callable[[Snapshot], None]


class RegistryError(Exception):
    """The registry could not be read (unreachable, refused, or answered nonsense)."""


class PollTimeout(RegistryError):
    """A long poll that ended without news: normal for watches without a server-side timeout."""


# A watch stream's line (one etcd event batch) may be as large as the values it carries; aiohttp's
# readline() stops at 64 KiB, so lines are split here, up to a bound that no sane entry reaches.
MAX_STREAM_LINE = 64 * 1024 * 1024


async def stream_lines(content: aiohttp.StreamReader, where: str) -> AsyncIterator[bytes]:
    """The newline-ended lines of a streamed answer, whatever their size; RegistryError for a
    line over MAX_STREAM_LINE (the caller reads the whole list again)."""
    pending = bytearray()
    while True:
        end = pending.find(b"\n")
        if end >= 0:
            line = bytes(pending[: end + 1])
            del pending[: end + 1]
            yield line
            continue
        if len(pending) > MAX_STREAM_LINE:
            raise RegistryError(f"{where}: a watch event over {MAX_STREAM_LINE} bytes")
        chunk = await content.readany()
        if not chunk:
            if pending:
                yield bytes(pending)
            return
        pending += chunk


class Source:
    def __init__(self, spec: SyncSpec, upstream: str) -> None:
        self.spec = spec
        self.upstream = upstream

    @property
    def where(self) -> str:
        return self.spec.address

    def next_endpoint(self) -> bool:
        """Move to the next registry address; False once every address was tried this round."""
        return False

    def start_round(self) -> None:
        """Begin a round of attempts over the registry addresses."""

    async def watch(self, on_snapshot: OnSnapshot) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        return None


class HttpSource(Source):
    def __init__(self, spec: SyncSpec, upstream: str) -> None:
        super().__init__(spec, upstream)
        self.endpoint_index = 0
        self.round_start = 0
        self._session: aiohttp.ClientSession | None = None

    @property
    def where(self) -> str:
        endpoint = self.spec.endpoints[self.endpoint_index]
        return f"{self.spec.scheme}://{endpoint}{self.spec.path}"

    def next_endpoint(self) -> bool:
        self.endpoint_index = (self.endpoint_index + 1) % len(self.spec.endpoints)
        return self.endpoint_index != self.round_start

    def start_round(self) -> None:
        self.round_start = self.endpoint_index

    def url(self, path: str) -> str:
        endpoint = self.spec.endpoints[self.endpoint_index]
        return f"{self.spec.scheme}://{endpoint}{path}"

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            ssl_context: ssl.SSLContext | bool = True
            if self.spec.scheme == "https":
                ssl_context = ssl.create_default_context(cafile=self.spec.ca_file)
                if self.spec.cert_file:
                    ssl_context.load_cert_chain(self.spec.cert_file, self.spec.key_file)
            auth = None
            if self.spec.username is not None:
                auth = aiohttp.BasicAuth(self.spec.username, self.spec.password or "")
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=ssl_context, limit=4),
                auth=auth,
                timeout=aiohttp.ClientTimeout(total=None, connect=min(self.spec.timeout, 10.0)),
                headers=self.headers(),
            )
        return self._session

    def headers(self) -> dict[str, str]:
        return {}

    async def request(
        self,
        method: str,
        path: str,
        *,
        timeout: float,
        params: dict[str, str] | None = None,
        json: Any = None,
    ) -> tuple[int, Mapping[str, str], bytes]:
        try:
            async with self.session().request(
                method,
                self.url(path),
                params=params,
                json=json,
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as response:
                body = await response.read()
                return response.status, response.headers, body
        except aiohttp.ClientError as exc:
            raise RegistryError(f"{self.where}: {exc or type(exc).__name__}") from exc
        except TimeoutError as exc:
            raise PollTimeout(f"{self.where}: timed out after {timeout:g}s") from exc

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
