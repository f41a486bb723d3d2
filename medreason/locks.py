"""Run locks: one training run at a time per checkpoint folder and per adapter folder.

    from medreason.locks import run_lock
    with run_lock(Path("results/run") / ".medreason.lock", "output_dir results/run"):
        ...   # a second run on the same folder stops at once: "... in use by PID 1234 ..."

A lock is a small file holding the PID (and host) of its holder, locked with `fcntl.flock` while the run lives. It
is opened with O_NOFOLLOW: a symlink in its place is refused, never followed (its target would be overwritten).
The kernel drops a flock when its process dies, however it dies (SIGKILL included), so a lock file left behind
by a dead run is stale by construction: the next run takes it over and says so in one log line. The PID in
the file is only what the error message names.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import socket
from contextlib import ExitStack, contextmanager
from pathlib import Path

from medreason.errors import UserError

log = logging.getLogger(__name__)


@contextmanager
def run_lock(path: str | Path, what: str):
    """Hold the lock file `path` for the block; `what` names the guarded folder in the error message.
    Folders that had to be created for the lock are removed again if the run left them empty."""
    path = Path(path)
    created = [p for p in [path.parent, *path.parent.parents] if not p.exists()]
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = _acquire(path, what)
    try:
        yield path
    finally:
        try:
            path.unlink()  # before the flock is released: a waiting process then retries on a fresh file
        except FileNotFoundError:
            pass
        os.close(fd)
        for folder in created:  # innermost first
            try:
                folder.rmdir()
            except OSError:
                break  # not empty: the run wrote something there, which stays


@contextmanager
def run_locks(*locks: tuple[str | Path, str]):
    """Several locks, taken in the order given and released in reverse."""
    with ExitStack() as stack:
        for path, what in locks:
            stack.enter_context(run_lock(path, what))
        yield


def _acquire(path: Path, what: str) -> int:
    while True:
        try:  # O_NOFOLLOW: a lock file that is a symlink is refused, never followed (its target would be truncated)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as e:
            if e.errno != errno.ELOOP:
                raise
            raise UserError(
                f"the lock file {path} is a symbolic link (to {os.readlink(path)}): medreason never writes through "
                f"one; remove it"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read(fd)
            os.close(fd)
            raise UserError(
                f"{what} is in use by another medreason run (PID {holder or 'unknown'}; lock {path}): "
                f"wait for it to finish, or choose another folder"
            ) from None
        # the holder may have removed the file between our open and our flock: then we hold a lock on a file
        # nobody else sees, and must try again on the one at `path`
        try:
            same = os.fstat(fd).st_ino == os.lstat(path).st_ino
        except FileNotFoundError:
            same = False
        if not same:
            os.close(fd)
            continue
        stale = _read(fd)
        if stale:
            log.info("taking over the stale lock %s of process %s, which is no longer running", path, stale)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
        return fd


def _read(fd: int) -> str:
    """'PID' (and ' on HOST' when it is another machine) from the lock file, or '' when it is empty."""
    text = os.pread(fd, 200, 0).decode(errors="replace").split()
    if not text:
        return ""
    pid, host = text[0], text[1] if len(text) > 1 else ""
    return pid if not host or host == socket.gethostname() else f"{pid} on {host}"
