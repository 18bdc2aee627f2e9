"""How this copy of upsync was built: with the hot path compiled by mypyc (setup.py) or not."""

import importlib.machinery


def hot_path_compiled() -> bool:
    from upsync.proxy import client

    origin = client.__file__ or ""
    return origin.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))


def describe() -> str:
    if hot_path_compiled():
        return "hot path compiled by mypyc"
    return "hot path interpreted (built with UPSYNC_PURE_PYTHON=1 or run from the source tree)"
