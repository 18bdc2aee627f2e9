"""nginx's own regression suite (nginx/nginx-tests) run against upsync, beside nginx itself.

    make nginx-tests                                  # fetches the suite into .nginx-tests
    NGINX_TESTS=/path/to/nginx-tests make nginx-tests # or points to a checkout
    NGINX_TESTS_FILES="proxy.t http_host.t" make nginx-tests

Each file runs under Test::Nginx with TEST_NGINX_BINARY set to `upsync-as-nginx` (which answers
-V with only the modules upsync has, so tests of the others are skipped), then with Debian's
nginx (through `nginx-without-dynamic-modules`: nginx-light lists modules it does not ship). Prints per file: tests planned, passed and failed, and whether it could start at all.
Not part of `make test`: the suite is large, and a failure here is a difference to work on."""

import argparse
import glob
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
WRAPPER = HERE / "upsync-as-nginx"
NGINX_WRAPPER = HERE / "nginx-without-dynamic-modules"
# proxying, upstreams and core HTTP: what upsync claims to do
DEFAULT_FILES = ("proxy*.t", "upstream*.t", "http_*.t", "headers.t", "return*.t")
REPOSITORY = "https://github.com/nginx/nginx-tests"
PER_FILE_TIMEOUT = 120


@dataclass
class Outcome:
    planned: int = 0
    passed: int = 0
    failed: int = 0
    skipped: str = ""  # why the whole file was skipped
    started: bool = True


def suite_directory() -> Path:
    given = os.environ.get("NGINX_TESTS")
    if given:
        return Path(given)
    local = ROOT / ".nginx-tests"
    if not (local / "lib" / "Test" / "Nginx.pm").exists():
        print(f"fetching {REPOSITORY} into {local}", file=sys.stderr)
        done = subprocess.run(["git", "clone", "--depth", "1", REPOSITORY, str(local)])
        if done.returncode != 0:
            raise SystemExit(
                f"cannot fetch nginx-tests: set NGINX_TESTS to a checkout of {REPOSITORY}"
            )
    return local


def run_file(suite: Path, name: str, binary: str, extra: dict[str, str] | None = None) -> Outcome:
    env = dict(os.environ, TEST_NGINX_BINARY=binary, UPSYNC_PYTHON=sys.executable, **(extra or {}))
    if os.geteuid() == 0 and "TEST_NGINX_GLOBALS" not in os.environ:
        # as root, nginx's workers would run as nobody and could not write the test's
        # directory (cache, temp files): the suite expects a user who owns it
        env["TEST_NGINX_GLOBALS"] = "user root;"
    try:
        done = subprocess.run(
            ["perl", "-I", str(suite / "lib"), name],
            cwd=suite,
            env=env,
            capture_output=True,
            text=True,
            timeout=PER_FILE_TIMEOUT,
        )
        out = done.stdout + done.stderr
    except subprocess.TimeoutExpired as exc:
        raw = exc.stdout or b""
        out = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
    outcome = Outcome()
    skip = re.search(r"^1\.\.0 # SKIP (.*)$", out, re.MULTILINE)
    if skip:
        outcome.skipped = skip[1]
        return outcome
    plan = re.search(r"^1\.\.(\d+)", out, re.MULTILINE)
    outcome.planned = int(plan[1]) if plan else 0
    for line in out.splitlines():
        todo = "# TODO" in line
        if line.startswith("ok "):
            outcome.passed += 1
        elif line.startswith("not ok ") and not todo:
            outcome.failed += 1
    outcome.started = "Can't start nginx" not in out
    return outcome


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nginx", default=shutil.which("nginx") or "/usr/sbin/nginx")
    parser.add_argument("--upsync-only", action="store_true")
    args = parser.parse_args()
    suite = suite_directory()
    patterns = os.environ.get("NGINX_TESTS_FILES", "").split() or list(DEFAULT_FILES)
    names = sorted({Path(p).name for pattern in patterns for p in glob.glob(str(suite / pattern))})
    rows = []
    totals = {"upsync": [0, 0, 0, 0], "nginx": [0, 0, 0, 0]}
    began = time.monotonic()
    for name in names:
        ours = run_file(suite, name, str(WRAPPER))
        theirs = (
            Outcome(skipped="not run")
            if args.upsync_only
            else run_file(suite, name, str(NGINX_WRAPPER), {"NGINX_BINARY": args.nginx})
        )
        rows.append((name, ours, theirs))
        for key, outcome in (("upsync", ours), ("nginx", theirs)):
            if not outcome.skipped:
                total = totals[key]
                total[0] += outcome.planned
                total[1] += outcome.passed
                total[2] += outcome.failed
                total[3] += 1 if outcome.started else 0

    def cell(outcome: Outcome) -> str:
        if outcome.skipped:
            return f"skipped ({outcome.skipped})"
        if not outcome.started:
            return f"did not start ({outcome.planned} planned)"
        return f"{outcome.passed}/{outcome.planned} ({outcome.failed} failed)"

    print("| file | upsync: passed/planned | nginx: passed/planned |")
    print("|---|---|---|")
    for name, ours, theirs in rows:
        print(f"| {name} | {cell(ours)} | {cell(theirs)} |")
    for key, (planned, passed, failed, started) in totals.items():
        print(
            f"{key}: {started} files started, {passed} of {planned} planned tests passed, {failed} failed"
        )
    print(f"({len(names)} files, {time.monotonic() - began:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
