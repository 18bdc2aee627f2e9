"""Running a rewrite phase (`set`, `rewrite`, `break`, `return`, `if`) over a request: it may
change the request's URI and arguments and set variables; what ends the phase is returned.
No I/O but the file tests of `if (-f ...)`."""

import os
from typing import Final

from upsync.config.rewrite import (
    Condition,
    IfBlock,
    ReturnStep,
    Rewrite,
    SetVariable,
    Step,
    Stop,
)
from upsync.proxy.request import Request

# what ends a phase: ran to its end, `last` (choose the location again), `break`, an answer
NEXT: Final = 0
LAST: Final = 1
BREAK: Final = 2
ANSWER: Final = 3
# nginx's limit on a request's URI changes ("rewrite or internal redirection cycle")
MAX_URI_CHANGES: Final = 10

Outcome = tuple[int, int, str | None]  # (what ended it, status of an answer, its text)
_RAN: Final[Outcome] = (NEXT, 0, None)


def run(steps: tuple[Step, ...], req: Request) -> Outcome:
    for step in steps:
        if isinstance(step, SetVariable):
            if req.vars is None:
                req.vars = {}
            req.vars[step.name] = step.value.render(req)
        elif isinstance(step, Rewrite):
            outcome = _rewrite(step, req)
            if outcome is not None:
                return outcome
        elif isinstance(step, ReturnStep):
            return (ANSWER, step.code, step.text.render(req) if step.text is not None else None)
        elif isinstance(step, Stop):
            return (BREAK, 0, None)
        elif isinstance(step, IfBlock) and holds(step.condition, req):
            if step.location is not None:
                req.extras().if_location = step.location
            outcome = run(step.steps, req)
            if outcome[0] != NEXT:
                return outcome
    return _RAN


def _rewrite(step: Rewrite, req: Request) -> Outcome | None:
    match = step.regex.search(req.path)
    if match is None:
        return None
    req.captures = match
    result = step.replacement.render(req)
    path, question, arguments = result.partition("?")
    if question and not arguments and result.endswith("?"):
        query = ""  # a replacement ending in "?" drops the request's arguments
    elif question:
        query = arguments + ("&" + req.query if req.query else "")
    else:
        query = req.query
    if step.redirects:
        code = 301 if step.flag == "permanent" else 302
        return (ANSWER, code, path + ("?" + query if query else ""))
    req.path, req.query = path, query
    req.rewritten = 1
    if step.flag == "last":
        return (LAST, 0, None)
    if step.flag == "break":
        return (BREAK, 0, None)
    return None


def holds(condition: Condition, req: Request) -> bool:
    value = condition.subject.render(req)
    kind = condition.kind
    if kind == "value":
        return value not in ("", "0")
    if kind == "equal":
        return (value == condition.text) != condition.negate
    if kind == "regex":
        assert condition.regex is not None
        match = condition.regex.search(value)
        if match is not None and not condition.negate:
            req.captures = match
        return (match is not None) != condition.negate
    test = condition.text
    if test == "f":
        found = os.path.isfile(value)
    elif test == "d":
        found = os.path.isdir(value)
    elif test == "e":
        found = os.path.exists(value)
    else:
        found = os.path.isfile(value) and os.access(value, os.X_OK)
    return found != condition.negate
