"""``python -m heatmap_devtools.localinfra.watchdog [--pid-file F] -- CMD``: CMD dies
with its starter.

The parent (``ServiceProcess(die_with_parent=True)``) keeps the write end of
this wrapper's stdin and never writes. However the parent ends - exit,
exception, SIGKILL, OOM kill - the kernel closes that pipe, stdin reads EOF,
and the wrapper stops CMD: SIGTERM (a broker closes its logs cleanly), then
SIGKILL after a grace period.

Why a pipe and not ``PR_SET_PDEATHSIG`` on CMD from the parent: the kernel
sends the death signal when the *thread* that forked exits, not the process,
so a service started from a worker thread (``asyncio.to_thread``, a pool, a
test helper) would be killed as soon as that thread ends; and the parent's
``preexec_fn`` is not safe once it has threads (a lock held by another
thread at fork time deadlocks the child). A pipe does not care which thread
started it. This wrapper is single-threaded, so here ``PR_SET_PDEATHSIG`` is
exact, and it covers the remaining case: if the wrapper itself is killed,
CMD gets SIGKILL from the kernel.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import select
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from heatmap_devtools.localinfra.process import read_pid_file, write_pid_file

PR_SET_PDEATHSIG = 1
GRACE_S = 10.0


def _die_with(parent: int) -> Callable[[], None]:
    libc = ctypes.CDLL(None, use_errno=True)

    def in_child() -> None:
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        # The wrapper may have died between fork and prctl: then nobody will
        # send the signal, so act on it now.
        if os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGKILL)

    return in_child


def _parent_gone(fd: int, timeout_s: float) -> bool:
    ready, _, _ = select.select([fd], [], [], timeout_s)
    return bool(ready) and not os.read(fd, 4096)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="heatmap_devtools.localinfra.watchdog")
    parser.add_argument("--pid-file", type=Path, default=None)
    parser.add_argument("--owner-pid", type=int, default=os.getppid())
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command")
    child = subprocess.Popen(command, stdin=subprocess.DEVNULL, preexec_fn=_die_with(os.getpid()))
    # A SIGTERM for the wrapper alone (not the group) must still reach CMD,
    # and must not kill the wrapper first (that would SIGKILL CMD instead).
    signal.signal(signal.SIGTERM, lambda *_: child.send_signal(signal.SIGTERM))
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if args.pid_file is not None:
        write_pid_file(args.pid_file, child.pid, args.owner_pid)
    try:
        stdin = sys.stdin.fileno()
        while child.poll() is None:
            if _parent_gone(stdin, 0.5):
                child.send_signal(signal.SIGTERM)
                try:
                    child.wait(GRACE_S)
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.wait()
    finally:
        if args.pid_file is not None:
            record = read_pid_file(args.pid_file)
            if record is not None and record.pid == child.pid:
                with contextlib.suppress(FileNotFoundError):
                    args.pid_file.unlink()
    code = child.returncode
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main())
