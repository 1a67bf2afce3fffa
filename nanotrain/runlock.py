"""One writer per run folder: an advisory `fcntl.flock` lock held for the life of a `nanotrain run`.

The lock file is `OUT/.<name>.lock`, next to the run folder rather than in it, so a run that fails its checks
before training leaves no empty run folder behind. It holds the holder's PID, which a second run on the same
folder names in its error. The lock is advisory: it keeps nanotrain processes apart, and the kernel releases it
when the holder exits, however it exits (kill -9 included), so a stale lock file never blocks anything.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

from nanotrain.errors import UserError


def lock_path(run_dir: Path) -> Path:
    return run_dir.parent / f".{run_dir.name}.lock"


class RunLock:
    """`with RunLock(run_dir):` holds the run folder's lock; UserError naming the holder's PID if it is taken."""

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = lock_path(self.run_dir)
        self.fd: int | None = None

    def __enter__(self) -> RunLock:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise UserError(f"{self.path}: cannot create the run's lock file ({e.strerror or e})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            if e.errno not in (errno.EAGAIN, errno.EACCES):
                raise UserError(f"{self.path}: cannot lock the run folder ({e.strerror or e})") from None
            raise UserError(f"{self.run_dir}: another nanotrain run (PID {holder}) is writing to this run folder; "
                            "wait for it to finish or stop it, or pass --name NEW for a separate run") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor releases the lock
            self.fd = None
