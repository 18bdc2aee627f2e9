"""Rules for a request head that need no connection: pure functions over bytes, tested by
feeding them data. The client connection applies them around the parser."""

import re
from typing import Final

# request header names as nginx sorts them (ngx_http_parse_header_line): letters, digits and
# "-" are valid; "_" only with underscores_in_headers; anything else makes the line invalid
NAME_VALID: Final = 0
NAME_UNDERSCORED: Final = 1
NAME_INVALID: Final = 2
_VALID_NAME: Final = re.compile(rb"[a-z0-9-]+")
_UNDERSCORED_NAME: Final = re.compile(rb"[a-z0-9_-]+")
# a method nginx accepts and the parser does not know ("FOOBAR")
_METHOD: Final = re.compile(rb"[A-Z_-]+")
_HIGH_BYTE: Final = re.compile(rb"[\x80-\xff]")


def header_name_class(lower_name: bytes) -> int:
    if _VALID_NAME.fullmatch(lower_name):
        return NAME_VALID
    if _UNDERSCORED_NAME.fullmatch(lower_name):
        return NAME_UNDERSCORED
    return NAME_INVALID


_SMALL_READ: Final = 4096


def bare_crs(data: bytes) -> list[int]:
    """Offsets of the CRs in `data` not followed by LF. A CR ending `data` is not counted: its LF
    may open the next read. The parser is lenient about line endings to accept bare LF as nginx
    does, which also lets a bare CR end a request line or a header section; nginx rejects those,
    and so does upsync (the caller knows which of these CRs fall inside a head)."""
    # every CR ends a line: the usual case. A read the size of a request head is checked with
    # one copy (a bytes method call costs more than copying a few hundred bytes: about 1,800
    # instructions against 2,900 for two counts); a large one without copying
    if len(data) <= _SMALL_READ:
        if 13 not in data.replace(b"\r\n", b""):
            return []
    elif data.count(b"\r") == data.count(b"\r\n"):
        return []
    found: list[int] = []
    last = len(data) - 1
    at = data.find(b"\r")
    while at != -1:
        if at != last and data[at + 1] != 10:
            found.append(at)
        at = data.find(b"\r", at + 1)
    return found


# what follows the target of a request line (line_after_target)
LINE_UNKNOWN: Final = 0  # the parser is asked
LINE_HTTP11: Final = 1
LINE_HTTP10: Final = 2
LINE_HTTP09: Final = 3  # the line ends after the target: HTTP/0.9, which the parser waits on
# added to the above: the line ends with a bare LF (the parser must then be lenient about CRs)
LINE_BARE_LF: Final = 4


def line_after_target(data: bytes, target_length: int) -> int:
    """For a read that starts with a request line whose target the parser found to be
    `target_length` bytes: whether the line names HTTP/1.1 or 1.0, or ends right after the
    target, plus LINE_BARE_LF when it ends with a bare LF. Found by position, as the parser
    found the method and target (asking the parser for the version formats a string; a bytes
    method call costs more than this walk)."""
    size = len(data)
    at = 0
    while at < size and at < 24:  # the method: up to the first space
        char = data[at]
        if char == 32:
            break
        if char == 13 or char == 10:
            return LINE_UNKNOWN  # an empty line first
        at += 1
    else:
        return LINE_UNKNOWN
    at += 1 + target_length
    if at >= size:
        return LINE_UNKNOWN
    char = data[at]
    if char == 13 or char == 10:
        return LINE_HTTP09
    if char != 32 or at + 9 >= size:
        return LINE_UNKNOWN
    end = data[at + 9]
    if end == 13:
        ending = 0
    elif end == 10:
        ending = LINE_BARE_LF
    else:
        return LINE_UNKNOWN
    # "HTTP/1.1" or "HTTP/1.0", read byte by byte: a slice would be a new bytes object
    minor = data[at + 8]
    if (
        (minor == 49 or minor == 48)  # "1", "0"
        and data[at + 1] == 72  # H
        and data[at + 2] == 84  # T
        and data[at + 3] == 84  # T
        and data[at + 4] == 80  # P
        and data[at + 5] == 47  # /
        and data[at + 6] == 49  # 1
        and data[at + 7] == 46  # .
    ):
        return (LINE_HTTP11 if minor == 49 else LINE_HTTP10) | ending
    return LINE_UNKNOWN | ending


# what a request's Connection headers say, as the parser reads them (llhttp): comma-separated
# tokens, in any case, with spaces and tabs around them
CONNECTION_CLOSE: Final = 1
CONNECTION_KEEP_ALIVE: Final = 2


def connection_tokens(value: bytes) -> int:
    """CONNECTION_CLOSE and CONNECTION_KEEP_ALIVE, for the tokens a Connection value holds."""
    if value == b"keep-alive":
        return CONNECTION_KEEP_ALIVE
    if value == b"close":
        return CONNECTION_CLOSE
    found = 0
    for token in value.split(b","):
        token = token.strip(b" \t").lower()
        if token == b"close":
            found |= CONNECTION_CLOSE
        elif token == b"keep-alive":
            found |= CONNECTION_KEEP_ALIVE
    return found


def line_method(data: bytes) -> bytes:
    """The method of a read that starts with a request line the parser took, and whose version
    line_after_target found (so a space follows the method): as the parser names it, without
    asking the parser (a method call that makes the bytes again)."""
    if data[0] == 71 and data[1] == 69 and data[2] == 84 and data[3] == 32:
        return b"GET"
    at = 0
    while data[at] != 32:
        at += 1
    return data[:at]


def _percent_encode(match: re.Match[bytes]) -> bytes:
    return b"%%%02X" % match.group()[0]


def parseable_request_line(data: bytes) -> tuple[bytes, bytes, bytes] | None:
    """For a first line the parser rejects but nginx accepts (a method it does not know, raw
    UTF-8 in the target): `data` with a line the parser takes, the method and the target as
    sent. None when the line is bad for nginx too."""
    end = data.find(b"\n")
    if end < 0:
        return None
    line = data[:end]
    cr = line.endswith(b"\r")
    parts = (line[:-1] if cr else line).split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/") or not parts[1]:
        return None
    method, target, version = parts
    if not _METHOD.fullmatch(method) or any(c < 0x21 or c == 0x7F for c in target):
        return None
    stand_in = _HIGH_BYTE.sub(_percent_encode, target)
    head = b"GET " + stand_in + b" " + version + (b"\r" if cr else b"")
    return head + data[end:], method, target


def browser_keepalive_disabled(
    msie6: bool, safari: bool, method: bytes, user_agent: bytes
) -> bool:
    """keepalive_disable: nginx closes a kept-alive connection after a POST from MSIE 6 and
    older ("msie6": MSIE may wait on such a connection), or after any request from Safari on
    macOS ("safari": it may send a POST on a connection just closed). The User-Agent tests
    are nginx's own."""
    msie = user_agent.find(b"MSIE ")
    is_msie = msie >= 0 and msie + 7 < len(user_agent) and b"Opera" not in user_agent
    if msie6 and method == b"POST" and is_msie and user_agent[msie + 6] == 46:
        version = user_agent[msie + 5]
        if version in (52, 53) or (version == 54 and b"SV1" not in user_agent[msie + 8 :]):
            return True
    return (
        safari
        and not is_msie
        and b"Opera" not in user_agent
        and b"Gecko/" not in user_agent
        and b"Chrome/" not in user_agent
        and b"Safari/" in user_agent
        and b"Mac OS X" in user_agent
    )


# the authority of an absolute-form request line as nginx's request-line parser takes it: a
# name of letters, digits, "." and "-", or a bracketed IP literal, then ":" and digits only
ABSOLUTE_AUTHORITY: Final = re.compile(
    r"(?:\[[0-9A-Za-z:._~!$&'()*+,;=-]*\]|[A-Za-z0-9.-]*)(?::[0-9]*)?"
)
