"""nginx's regular expressions (PCRE syntax) in Python's re."""

import re

_PCRE_NAMED_GROUP = re.compile(r"\(\?<(?![=!])")
_PCRE_QUOTED_GROUP = re.compile(r"\(\?'(\w+)'")
_PCRE_QUOTED_TEXT = re.compile(r"\\Q(.*?)(?:\\E|$)", re.DOTALL)


def compile_regex(pattern: str, flags: int = 0) -> re.Pattern[str]:
    """`(?<name>...)` and `(?'name'...)` are spelled `(?P<name>...)` in Python; PCRE's
    `\\Q...\\E` (literal text, to the end without `\\E`) is escaped here."""
    if "\\Q" in pattern:
        pattern = _PCRE_QUOTED_TEXT.sub(lambda m: re.escape(m.group(1)), pattern)
    pattern = _PCRE_NAMED_GROUP.sub("(?P<", pattern)
    return re.compile(_PCRE_QUOTED_GROUP.sub(r"(?P<\1>", pattern), flags)
