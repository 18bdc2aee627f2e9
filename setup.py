"""Compiles the request hot path with mypyc (part of mypy, pinned in pyproject's build
requirements); everything else stays interpreted. UPSYNC_PURE_PYTHON=1 builds without a C
compiler, every module interpreted: the same behaviour at about half the throughput. Without a C
compiler or the Python headers the interpreted build is chosen, with a warning, rather than
failing the install.

With GCC the compiled build is profile-guided, as CPython's own release builds are: compiled
once instrumented, trained by scripts/pgo_training.py (a typical request mix through the new
build, a few seconds), then compiled again with what the training measured. GCC then keeps the code
a request runs together and the error paths apart; where the hot path's code no longer fits the
instruction cache, that is what upsync's requests per second depend on. If the training fails,
the build goes on without a profile, with a warning. UPSYNC_PGO=0 skips the training."""

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
TRAINING = ROOT / "scripts" / "pgo_training.py"
TRAINING_TIMEOUT = 300
# written into the package when the profile was used; `upsync -V` reports it
PROFILE_MARK = Path("upsync", "profile-guided")
# How compiled functions call each other and CPython. By default every function of a shared
# object may be replaced by another object's at load time, so calls between them go through
# the PLT and none can be inlined into another: hidden visibility makes them direct, and lets
# the profile inline the hot ones (mypyc's modules find each other through capsules, and
# PyInit_ stays exported). -fno-plt calls CPython through its GOT entry, without the PLT's
# extra jump. With the profile: 28,605 -> 27,795 instructions per keep-alive request, 447 -> 229
# instruction-cache misses (bench/instructions.py --cache); without it, no change.
LINKAGE = ["-fvisibility=hidden", "-fno-plt"]
INSTRUMENT = ["-fprofile-generate"]
# -fprofile-partial-training: code the training did not run is optimised for speed as without a
# profile, not for size (a user's configuration runs paths a training mix cannot all reach)
USE_PROFILE = [
    "-fprofile-use",
    "-fprofile-partial-training",
    "-fprofile-correction",
    "-Wno-missing-profile",
    "-Wno-error=coverage-mismatch",
]

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

    extensions: list[Extension] = mypycify(HOT_PATH, group_name="upsync", opt_level="3")
    if sys.platform == "linux":
        for extension in extensions:
            extension.extra_compile_args += LINKAGE
    return extensions


def compiler_is_gcc() -> bool:
    compiler = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    try:
        version = subprocess.run(
            [*compiler.split(), "--version"], capture_output=True, text=True, check=False
        ).stdout
    except OSError:
        return False
    return "Free Software Foundation" in version  # GCC's banner; clang's does not say it


class ProfileGuidedBuild(build_ext):
    """build_ext twice around a training run (the module docstring says why)."""

    def run(self) -> None:
        mark = Path(self.build_lib, PROFILE_MARK)
        mark.unlink(missing_ok=True)  # a build directory outlives a build
        # every object is compiled in every pass: an object left from an earlier build (with
        # other flags, or an interrupted training) is newer than its unchanged C file, and would
        # be trained (uninstrumented, so nothing is learnt) or installed (instrumented)
        self.force = True
        if not self._wanted():
            super().run()
            return
        for stale in Path(self.build_temp).rglob("*.gcda"):
            stale.unlink()
        compiler = self.compiler  # a name, until run() puts the compiler object there
        base = [(list(e.extra_compile_args), list(e.extra_link_args)) for e in self.extensions]
        self._set_flags(base, INSTRUMENT, INSTRUMENT)
        super().run()
        trained = self._train() and self._profiled()
        self._set_flags(base, USE_PROFILE if trained else [], [])
        self.compiler = compiler
        super().run()
        if trained:
            mark.write_text("trained by scripts/pgo_training.py\n")

    def _wanted(self) -> bool:
        if not self.extensions or self.inplace:
            return False
        if os.environ.get("UPSYNC_PGO", "1") in ("", "0"):
            return False
        if not TRAINING.exists() or not compiler_is_gcc():
            print("upsync: no GCC or no training script: no profile-guided build", file=sys.stderr)
            return False
        return True

    def _profiled(self) -> bool:
        if any(Path(self.build_temp).rglob("*.gcda")):
            return True
        print("upsync: the training wrote no profile: building without one", file=sys.stderr)
        return False

    def _set_flags(
        self,
        base: list[tuple[list[str], list[str]]],
        compile_flags: list[str],
        link_flags: list[str],
    ) -> None:
        for extension, (compile_args, link_args) in zip(self.extensions, base, strict=True):
            extension.extra_compile_args = [*compile_args, *compile_flags]
            extension.extra_link_args = [*link_args, *link_flags]

    def _train(self) -> bool:
        print("upsync: profile-guided build: training run", file=sys.stderr)
        try:
            result = subprocess.run(
                [sys.executable, str(TRAINING), str(Path(self.build_lib).resolve())],
                timeout=TRAINING_TIMEOUT,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as error:
            print(f"upsync: profile training did not finish: {error}", file=sys.stderr)
            return False
        if result.returncode != 0:
            print("upsync: building without a profile", file=sys.stderr)
            return False
        return True


setup(ext_modules=compiled_modules(), cmdclass={"build_ext": ProfileGuidedBuild})
