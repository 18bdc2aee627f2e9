"""Files a location serves (nginx's static and index modules, as far as a proxy's config uses
them): where a URI's file is, what answers it, and its response head."""

import os
import stat
from dataclasses import dataclass
from email.utils import formatdate, parsedate_to_datetime
from typing import Final

from upsync.config.model import LocationConfig, StaticFiles

# up to this size a file is read and sent in one write; larger ones go block by block
WHOLE_FILE: Final = 256 * 1024
BLOCK: Final = 64 * 1024


@dataclass(frozen=True, slots=True)
class Found:
    """What a URI names: a file to send, an index file's URI to serve instead, a directory
    to redirect to with its slash, or nothing (status 404, 403, 405)."""

    status: int = 200
    path: str = ""
    size: int = 0
    mtime: float = 0.0
    index_uri: str = ""
    redirect_slash: bool = False


def file_path(handler: StaticFiles, location: LocationConfig, uri: str) -> str:
    prefix = handler.prefix
    if handler.alias and prefix is not None:
        return handler.root + uri[len(prefix) :]
    return handler.root + uri


def find(handler: StaticFiles, location: LocationConfig, uri: str, method: bytes) -> Found:
    if method not in (b"GET", b"HEAD"):
        return Found(405)
    path = file_path(handler, location, uri)
    if uri.endswith("/"):
        for name in handler.index:
            if name.startswith("/"):
                return Found(index_uri=name)
            candidate = path + name
            if os.path.isfile(candidate):
                return Found(index_uri=uri + name)
        return Found(403 if os.path.isdir(path) else 404)
    try:
        info = os.stat(path)
    except (OSError, ValueError):
        return Found(404)
    if stat.S_ISDIR(info.st_mode):
        return Found(redirect_slash=True)
    if not stat.S_ISREG(info.st_mode):
        return Found(404)
    if not os.access(path, os.R_OK):
        return Found(403)
    return Found(200, path, info.st_size, info.st_mtime)


def content_type(location: LocationConfig, path: str) -> str:
    _, dot, extension = os.path.basename(path).rpartition(".")
    if dot:
        found = location.types.get(extension.lower())
        if found is not None:
            return found
    return location.default_type


def etag(found: Found) -> str:
    return f'"{int(found.mtime):x}-{found.size:x}"'


def not_modified(
    found: Found, if_modified_since: bytes | None, if_none_match: bytes | None
) -> bool:
    """A conditional GET the file satisfies: its ETag matches, or it has not changed since."""
    if if_none_match is not None:
        tags = [tag.strip() for tag in if_none_match.decode("latin-1").split(",")]
        return "*" in tags or etag(found) in tags or ("W/" + etag(found)) in tags
    if if_modified_since is not None:
        try:
            since = parsedate_to_datetime(if_modified_since.decode("latin-1")).timestamp()
        except (TypeError, ValueError, IndexError):
            return False
        return int(found.mtime) <= since
    return False


def validators(found: Found) -> list[bytes]:
    """The Last-Modified and ETag lines."""
    modified = formatdate(int(found.mtime), usegmt=True)
    return [f"Last-Modified: {modified}\r\n".encode(), f"ETag: {etag(found)}\r\n".encode()]
