"""nginx's regular expressions (PCRE syntax) in Python's re."""

import re

_PCRE_NAMED_GROUP = re.compile(r"\(\?<(?![=!])")
_PCRE_QUOTED_GROUP = re.compile(r"\(\?'(\w+)'")


def compile_regex(pattern: str, flags: int = 0) -> re.Pattern[str]:
    """`(?<name>...)` and `(?'name'...)` are spelled `(?P<name>...)` in Python."""
    pattern = _PCRE_NAMED_GROUP.sub("(?P<", pattern)
    return re.compile(_PCRE_QUOTED_GROUP.sub(r"(?P<\1>", pattern), flags)
