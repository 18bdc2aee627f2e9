"""nginx-style error log ("2026/01/02 10:00:00 [error] 123#0: ...") and access log files."""

import logging
import os
import sys
from typing import IO

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "notice": logging.INFO,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "crit": logging.CRITICAL,
    "alert": logging.CRITICAL,
    "emerg": logging.CRITICAL,
}
_NAMES = {
    logging.DEBUG: "debug",
    logging.INFO: "notice",
    logging.WARNING: "warn",
    logging.ERROR: "error",
    logging.CRITICAL: "crit",
}


class NginxFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__(datefmt="%Y/%m/%d %H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        level = _NAMES.get(record.levelno, "error")
        stamp = self.formatTime(record, self.datefmt)
        text = f"{stamp} [{level}] {os.getpid()}#0: {record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def setup_error_log(target: str, level: str) -> None:
    root = logging.getLogger("upsync")
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    output: logging.Handler
    if target in ("stderr", "/dev/stderr"):
        output = logging.StreamHandler(sys.stderr)
    else:
        os.makedirs(os.path.dirname(target) or ".", exist_ok=True)
        output = logging.FileHandler(target)
    output.setFormatter(NginxFormatter())
    root.addHandler(output)
    root.setLevel(LEVELS.get(level, logging.ERROR))
    root.propagate = False


class AccessLogFiles:
    """Open access log files, one handle per path, reopened on reload."""

    def __init__(self) -> None:
        self.files: dict[str, IO[str]] = {}

    def get(self, path: str) -> IO[str]:
        handle = self.files.get(path)
        if handle is None:
            if path in ("stderr", "/dev/stderr"):
                handle = sys.stderr
            elif path == "/dev/stdout":
                handle = sys.stdout
            else:
                os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
                # lines hold one character per byte (see config.variables.as_wire_text)
                handle = open(  # noqa: SIM115 - kept open for the process
                    path, "a", buffering=1, encoding="latin-1", errors="replace"
                )
            self.files[path] = handle
        return handle

    def close(self) -> None:
        for handle in self.files.values():
            if handle not in (sys.stderr, sys.stdout):
                handle.close()
        self.files.clear()
