"""Command line shaped like nginx's: -c, -t, -T, -p, -g, -s, -v, -V."""

import argparse
import logging
import os
import signal
import sys
from importlib import metadata

from upsync import __version__, build
from upsync.config import Config, load_config
from upsync.errors import ConfigError

log = logging.getLogger("upsync")
DEFAULT_CONFIG = "/etc/upsync/upsync.conf"
_LIBRARIES = (
    "crossplane",
    "httptools",
    "uvloop",
    "orjson",
    "aiohttp",
    "watchfiles",
    "setproctitle",
)
SIGNALS = {
    "stop": signal.SIGTERM,
    "quit": signal.SIGQUIT,
    "reload": signal.SIGHUP,
    "reopen": signal.SIGUSR1,
}


def _say(message: str) -> None:
    print(f"upsync: {message}", file=sys.stderr)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="upsync",
        description="Reverse proxy and load balancer with nginx-syntax config and live upstreams.",
    )
    parser.add_argument("-c", dest="config", default=DEFAULT_CONFIG, help="configuration file")
    parser.add_argument(
        "-t", dest="test", action="store_true", help="test the configuration and exit"
    )
    parser.add_argument(
        "-T", dest="dump", action="store_true", help="test the configuration, print it and exit"
    )
    parser.add_argument(
        "-p",
        dest="prefix",
        default=None,
        help="prefix for relative paths (default: the config's directory)",
    )
    parser.add_argument(
        "-g", dest="globals", default="", help='global directives, e.g. "pid /tmp/u.pid;"'
    )
    parser.add_argument(
        "-e",
        dest="error_log",
        default="",
        help="error log file (or stderr) unless the configuration names one, as nginx's -e",
    )
    parser.add_argument(
        "-s", dest="signal", choices=sorted(SIGNALS), help="send a signal to the running upsync"
    )
    parser.add_argument(
        "-q", dest="quiet", action="store_true", help="suppress non-error messages during -t"
    )
    parser.add_argument("-v", dest="version", action="store_true", help="show version and exit")
    parser.add_argument(
        "-V",
        dest="verbose_version",
        action="store_true",
        help="show version and build details and exit",
    )
    return parser


def _load(args: argparse.Namespace) -> Config | None:
    try:
        return load_config(args.config, args.prefix, args.globals, args.error_log)
    except ConfigError as exc:
        _say(f"[emerg] {exc}")
        return None


def _test(args: argparse.Namespace) -> int:
    config = _load(args)
    path = os.path.abspath(args.config)
    if config is None:
        _say(f"configuration file {path} test failed")
        return 1
    if not args.quiet:
        for notice in config.notices:
            _say(f"[notice] {notice}")
        _say(f"the configuration file {path} syntax is ok")
        _say(f"configuration file {path} test is successful")
    if args.dump:
        for file in config.files:
            print(f"# configuration file {file}:")
            with open(file) as handle:
                sys.stdout.write(handle.read())
            print()
    return 0


def _send_signal(args: argparse.Namespace) -> int:
    config = _load(args)
    if config is None:
        return 1
    pid_file = config.main.pid
    try:
        with open(pid_file) as handle:
            pid = int(handle.read().strip())
    except (OSError, ValueError) as exc:
        _say(f'[error] invalid PID number in "{pid_file}" ({exc})')
        return 1
    try:
        os.kill(pid, SIGNALS[args.signal])
    except OSError as exc:
        _say(f"[alert] kill({pid}, {SIGNALS[args.signal].value}) failed ({exc.strerror})")
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.prefix and not os.path.isabs(args.config):
        args.config = os.path.join(args.prefix, args.config)  # as nginx: -c under -p
    if args.version or args.verbose_version:
        print(f"upsync version: upsync/{__version__}", file=sys.stderr)
        if args.verbose_version:
            versions = ", ".join(f"{name} {metadata.version(name)}" for name in _LIBRARIES)
            print(f"python {sys.version.split()[0]}; {versions}", file=sys.stderr)
            print(build.describe(), file=sys.stderr)
        return 0
    if args.test or args.dump:
        return _test(args)
    if args.signal:
        return _send_signal(args)
    config = _load(args)
    if config is None:
        return 1
    from upsync.server import run

    return run(config, args)
