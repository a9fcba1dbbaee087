"""Watchdog that owns an embedded redis-server (run as a script: no package imports).

    python _guard.py FD -- redis-server ARGS...

Starts the server, prints its pid, then waits on the read end FD of a pipe whose write end only
the parent holds. EOF (the parent closed it in stop(), exited, or was killed with -9) → SIGTERM
the server (it flushes its AOF), wait, exit. If the server dies by itself the guard exits too.
The server gets PR_SET_PDEATHSIG so it also dies if the guard itself is killed.
"""

import ctypes
import os
import select
import signal
import subprocess
import sys

PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: the pipe EOF still covers parent death
        pass


def main() -> int:
    fd = int(sys.argv[1])
    cmd = sys.argv[3:]
    proc = subprocess.Popen(cmd, preexec_fn=_die_with_parent, stdin=subprocess.DEVNULL)
    print(proc.pid, flush=True)

    def stop(*_: object) -> None:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while True:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready and not os.read(fd, 64):
            stop()
        if proc.poll() is not None:
            return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
