"""nginx's regular expressions (PCRE syntax), compiled by the `regex` package: it takes what
PCRE takes and Python's re does not (`\\p{N}`, `\\p{Lu}`, possessive quantifiers, atomic
groups), so a server_name or location regex nginx accepts loads here too."""

from typing import TypeAlias

import regex

Regex: TypeAlias = regex.Pattern[str]
RegexMatch: TypeAlias = regex.Match[str]
RegexError = regex.error
IGNORECASE = regex.IGNORECASE

_PCRE_NAMED_GROUP = regex.compile(r"\(\?<(?![=!])")
_PCRE_QUOTED_GROUP = regex.compile(r"\(\?'(\w+)'")
_PCRE_QUOTED_TEXT = regex.compile(r"\\Q(.*?)(?:\\E|$)", regex.DOTALL)


def compile_regex(pattern: str, flags: int = 0) -> Regex:
    """`(?<name>...)` and `(?'name'...)` are spelled `(?P<name>...)` here; PCRE's
    `\\Q...\\E` (literal text, to the end without `\\E`) is escaped."""
    if "\\Q" in pattern:
        pattern = _PCRE_QUOTED_TEXT.sub(lambda m: regex.escape(m.group(1)), pattern)
    pattern = _PCRE_NAMED_GROUP.sub("(?P<", pattern)
    return regex.compile(_PCRE_QUOTED_GROUP.sub(r"(?P<\1>", pattern), flags)
