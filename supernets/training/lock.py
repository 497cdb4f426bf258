"""One writer per run folder: an exclusive ``fcntl.flock`` on a lock file, released by the OS when its holder
dies (a killed run never blocks the next one for longer than its processes live).

Training takes two: the command holds ``train.lock`` for its whole life (a second ``nas train`` on the same
run is refused at once, naming the holder), and the process that writes checkpoints (the in-process loop,
or rank 0 of the Ray workers) holds ``train.writer.lock`` while it trains. A Ray worker orphaned by a killed
driver can go on for seconds; the next run waits for its writer lock before it writes anything.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from pathlib import Path
from types import TracebackType


class LockBusyError(RuntimeError):
    """The lock is held by another process; the message names it (pid and host)."""


class FileLock:
    """An exclusive advisory lock on ``path``; the holder's pid and host are written into the file."""

    def __init__(self, path: str | os.PathLike[str], what: str = "this run") -> None:
        self.path = Path(path)
        self.what = what
        self._fd: int | None = None

    def holder(self) -> str:
        try:
            text = self.path.read_text().strip()
        except OSError:
            text = ""
        return text or "another process"

    def acquire(self, timeout: float = 0.0, waiting: str | None = None) -> FileLock:
        """Take the lock, waiting up to ``timeout`` seconds (printing ``waiting`` once if it must wait).

        Raises:
            LockBusyError: still held after ``timeout``.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + timeout
        told = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = self.holder()
                    os.close(fd)
                    raise LockBusyError(f"{self.what} is in use by {holder} (lock {self.path}); wait for it "
                                        f"to finish or stop it") from None
                if waiting and not told:
                    print(waiting.format(holder=self.holder()), flush=True)
                    told = True
                time.sleep(0.2)
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> FileLock:
        return self.acquire() if self._fd is None else self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()
