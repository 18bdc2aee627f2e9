"""The master's spawner: a process that has imported everything a worker runs and forks a
worker on request. A fork costs a millisecond where starting a Python process and importing
upsync costs half a second of CPU; and forking here, never in the master, keeps the master's
event loop, registry connections and threads out of every worker. The master forks the first
spawner before its own loop starts; a replacement is started as `python -m upsync.spawner FD`.

Each request is one datagram on a SOCK_SEQPACKET socket carrying the descriptors the worker
needs: its channel to the master first, then the listening sockets. The master learns the
worker's pid from the worker itself; the spawner only forks and reaps."""

import gc
import os
import signal
import socket
import sys
import traceback

from setproctitle import setproctitle

from upsync import worker

MAX_DESCRIPTORS = 253  # SCM_RIGHTS' limit per message
SIGNALS_TO_IGNORE = (signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1)


def _run_worker(fds: list[int]) -> None:
    for sig in (*SIGNALS_TO_IGNORE, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    code = 1
    try:
        code = worker.main(fds[0], fds[1:])
    except BaseException:  # a worker ends here, never back in the spawner's loop
        traceback.print_exc()
    finally:
        sys.stderr.flush()
        os._exit(code)


def serve(control: socket.socket) -> None:
    setproctitle("upsync: worker spawner")
    # the master decides when the spawner ends: by closing the socket (or by dying)
    for sig in SIGNALS_TO_IGNORE:
        signal.signal(sig, signal.SIG_IGN)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps the workers
    gc.collect()
    gc.freeze()  # forked workers share these pages instead of copying them on first touch
    while True:
        message, fds, _, _ = socket.recv_fds(control, 16, MAX_DESCRIPTORS)
        if not message:
            return
        if os.fork() == 0:
            control.close()
            _run_worker(fds)
        for fd in fds:
            os.close(fd)


if __name__ == "__main__":
    serve(socket.socket(fileno=int(sys.argv[1])))
