"""An exclusive lock on a run directory for the lifetime of a run.

Two runs sharing a directory delete each other's checkpoints or resume from each other. The
lock is `DIR/LOCK`, held with `flock` (released by the kernel when the process dies, however it
dies) and naming its holder (pid, host, start time) for the error the second run gets. A `LOCK`
still naming a holder but not locked is what a crashed run leaves: it is taken over, with a
note. Where the filesystem has no `flock`, the holder's pid decides: a dead pid on this host is
a stale lock, a live one (or another host's) holds it.

In a multi-process run process 0 holds the lock for all; every process learns the outcome.
"""

import errno
import fcntl
import json
import os
import socket
import time
from pathlib import Path

import jax

from eqvlp.train import processes


class RunLocked(OSError):
    """Another live run holds the run directory."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _holder(text: str) -> dict:
    try:
        holder = json.loads(text)
        return holder if isinstance(holder, dict) and "pid" in holder else {}
    except json.JSONDecodeError:
        return {}


def _describe(holder: dict) -> str:
    if not holder:
        return "another process"
    return (f"pid {holder.get('pid')} on {holder.get('host')}, started "
            f"{holder.get('started', '?')}")


class RunLock:
    """`with RunLock(directory, log=print): ...` holds `directory/LOCK` (process 0 only)."""

    def __init__(self, directory: str | os.PathLike, *, log=print):
        self.path = Path(directory) / "LOCK"
        self.log = log
        self.fd: int | None = None

    def _acquire(self) -> None:
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        previous = _holder(os.pread(self.fd, 4096, 0).decode(errors="replace"))
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._close()
            raise RunLocked(f"run directory {self.path.parent} is in use by another run "
                            f"({_describe(previous)}): wait for it to end, or give this run "
                            "another --workdir") from None
        except OSError as error:
            if error.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                raise
            self._by_pid(previous)  # no flock on this filesystem
        if previous:
            self.log(f"note: {self.path} was left by a run that ended without releasing it "
                     f"({_describe(previous)}, no longer running): taking it over")
        holder = {"pid": os.getpid(), "host": socket.gethostname(),
                  "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, json.dumps(holder).encode(), 0)
        os.fsync(self.fd)

    def _by_pid(self, previous: dict) -> None:
        if not previous:
            return
        here = previous.get("host") == socket.gethostname()
        if not here or _alive(int(previous["pid"])):
            self._close()
            raise RunLocked(
                f"run directory {self.path.parent} is in use by another run "
                f"({_describe(previous)}): wait for it to end, or give this run another "
                f"--workdir; if that run is gone, delete {self.path}")

    def _close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def release(self) -> None:
        """Empties and unlocks `LOCK` (a clean end; the file stays, so no race on its inode)."""
        if self.fd is not None:
            os.ftruncate(self.fd, 0)
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            self._close()

    def __enter__(self) -> "RunLock":  # noqa: PYI034 (not subclassed)
        failed = None
        if jax.process_index() == 0:
            try:
                self._acquire()
            except OSError as error:
                failed = error
        refused = processes.agree("run-lock", str(failed) if failed else None)
        if failed is not None:
            raise failed
        if refused:
            self.release()
            raise RunLocked(f"process 0 could not lock the run directory: {refused[0]}")
        return self

    def __exit__(self, *exc) -> None:
        self.release()
