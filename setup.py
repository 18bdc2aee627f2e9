"""Compiles the request hot path with mypyc (part of mypy, pinned in pyproject's build
requirements); everything else stays interpreted. UPSYNC_PURE_PYTHON=1 builds without a C
compiler, every module interpreted: the same behaviour at about half the throughput. Without a C
compiler or the Python headers the interpreted build is chosen, with a warning, rather than
failing the install."""

import os
import shutil
import sys
import sysconfig
from pathlib import Path

from setuptools import Extension, setup

# the modules a proxied request runs through; the rest (config loading, registries, sync) is
# not on the hot path and keeps the flexibility of interpreted code
HOT_PATH = [
    "src/upsync/app.py",
    "src/upsync/generation.py",
    "src/upsync/config/model.py",
    "src/upsync/config/variables.py",
    "src/upsync/proxy/client.py",
    "src/upsync/proxy/connections.py",
    "src/upsync/proxy/body.py",
    "src/upsync/proxy/exchange.py",
    "src/upsync/proxy/http1.py",
    "src/upsync/proxy/intake.py",
    "src/upsync/proxy/request.py",
    "src/upsync/proxy/routing.py",
    "src/upsync/proxy/timer.py",
    "src/upsync/proxy/upstream_conn.py",
    "src/upsync/upstream/balancer.py",
    "src/upsync/upstream/group.py",
    "src/upsync/upstream/peer.py",
    "src/upsync/upstream/pool.py",
]


def compiled_modules() -> list[Extension]:
    if os.environ.get("UPSYNC_PURE_PYTHON", "") not in ("", "0"):
        return []
    compiler = os.environ.get("CC", "cc").split()[0]
    headers = Path(sysconfig.get_paths()["include"], "Python.h")
    if shutil.which(compiler) is None or not headers.exists():
        print(
            f"upsync: no C compiler ({compiler}) or no {headers}: building the interpreted hot"
            " path (install gcc and python3-dev for the compiled one)",
            file=sys.stderr,
        )
        return []
    from mypyc.build import mypycify

    return mypycify(HOT_PATH, group_name="upsync", opt_level="3")


setup(ext_modules=compiled_modules())
