"""How this copy of upsync was built: with the hot path compiled by mypyc (setup.py) or not, and
whether the compiled build was profile-guided."""

import importlib.machinery
from pathlib import Path

# written by setup.py's build when the training's profile was used
PROFILE_MARK = Path(__file__).with_name("profile-guided")


def hot_path_compiled() -> bool:
    from upsync.proxy import client

    origin = client.__file__ or ""
    return origin.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))


def profile_guided() -> bool:
    return PROFILE_MARK.exists()


def describe() -> str:
    if hot_path_compiled():
        if profile_guided():
            return "hot path compiled by mypyc, profile-guided"
        return "hot path compiled by mypyc"
    return "hot path interpreted (built with UPSYNC_PURE_PYTHON=1 or run from the source tree)"
