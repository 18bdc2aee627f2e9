"""Errors a user can cause, carrying where they come from."""


class ConfigError(Exception):
    """A configuration problem, reported nginx-style: message, then file and line."""

    def __init__(self, message: str, file: str | None = None, line: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.file = file
        self.line = line

    def __str__(self) -> str:
        if self.file is None:
            return self.message
        if self.line is None:
            return f"{self.message} in {self.file}"
        return f"{self.message} in {self.file}:{self.line}"


class StartupError(Exception):
    """A reason not to start (a strong registry dependency unreachable, workers that fail)."""
