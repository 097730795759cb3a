"""Lock files: several processes, on one machine or on the nodes of a cluster sharing the folder,
split work without doing it twice.

See :class:`FileLock` for the protocol and the rule by which a lock left behind by a dead process
is taken over.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.io import DiskFullError, _disk_full, json_bytes, make_dirs

# --------------------------------------------------------------------------------------------
# Lock files

LOCK_STALE_S = 600.0  # our choice: a lock file whose mtime is 10 minutes old is stale
LOCK_REFRESH_S = 30.0  # our choice: a holder refreshes its lock's mtime every 30 s (20 per window)
# A takeover (judge again, remove, create) takes milliseconds: a takeover mutex this old was left
# by a process that died inside one.
TAKEOVER_STALE_S = 60.0


class StaleLockWarning(UserWarning):
    """A lock left by a process that is gone (or silent for too long) was taken over."""


def _proc_start(pid: int) -> str | None:
    """The start time of process ``pid`` (field 22 of ``/proc/<pid>/stat``, clock ticks after
    boot), which tells a reused pid from the original; None without ``/proc``."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # fields from the 3rd on follow the ")" of comm


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def describe_holder(record: dict[str, Any] | None) -> str:
    """``host H pid P since 2026-01-01 12:00:00 UTC`` (and what it holds the lock for)."""
    if not record:
        return "an unknown holder (its lock file is empty or unreadable)"
    since = record.get("started_utc") or "?"
    what = f" for {record['label']}" if record.get("label") else ""
    return f"host {record.get('host', '?')} pid {record.get('pid', '?')} since {since}{what}"


class FileLock:
    """An exclusive claim on some work (one cell, one cached test set, a run's report), held by
    a lock file; several processes on one machine or on the nodes of a cluster that share the
    folder take turns through it.

    Protocol (every step checkable on the file):

    - **acquire**: create the file with ``os.open(path, O_CREAT | O_EXCL)`` (of any number of
      processes exactly one succeeds) and write the holder's record as JSON: ``host``, ``pid``,
      ``pid_start`` (the process's start time from ``/proc``), ``started`` (epoch seconds),
      ``started_utc``, ``token`` (random, names this claim) and ``label``;
    - **hold**: a daemon thread sets the file's mtime to now every ``refresh_s`` seconds while
      the file still holds this claim's token;
    - **release**: remove the file if it still holds the token;
    - **stale**: the file names this host and its pid is not running, or is running but started
      at another time than recorded (a reused pid); or its mtime is more than ``stale_s``
      seconds old (the only test for a holder on another host). A file whose JSON cannot be
      read (its writer is between create and write, or died there) is judged by its age only;
    - **takeover**: a stale lock is removed and created afresh, with a
      :class:`StaleLockWarning` naming the old holder and why it is stale. The removal happens
      while holding a second file, ``<lock>.takeover``, itself created with ``O_EXCL``, and the
      staleness is judged again under it, so two processes never take the same lock over
      together (a ``.takeover`` file older than :data:`TAKEOVER_STALE_S` is removed).

    A holder that was silent for ``stale_s`` (a suspended machine) may find its lock taken over;
    its refresh thread then warns. Results are written atomically, so the files stay whole.
    """

    def __init__(self, path: str | os.PathLike, label: str = "", stale_s: float = LOCK_STALE_S,
                 refresh_s: float = LOCK_REFRESH_S):
        self.path = Path(path)
        self.label = label
        self.stale_s = stale_s
        self.refresh_s = refresh_s
        self.record: dict[str, Any] | None = None  # this claim's record while held
        self._stop: threading.Event | None = None
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"FileLock({str(self.path)!r})"

    @property
    def held(self) -> bool:
        return self.record is not None

    # -- reading and judging ------------------------------------------------------------------

    def _read(self) -> tuple[dict[str, Any] | None, os.stat_result | None]:
        """(record or None when unreadable, stat or None when there is no lock file)."""
        try:
            st = os.stat(self.path)
            text = self.path.read_text()
        except FileNotFoundError:
            return None, None
        try:
            record = json.loads(text)
        except ValueError:
            return None, st
        return (record if isinstance(record, dict) else None), st

    def stale_reason(self, record: dict[str, Any] | None, st: os.stat_result) -> str | None:
        """Why the lock file (``record``, ``st``) is stale by the rule above; None when live."""
        pid = record.get("pid") if record else None
        if record and record.get("host") == socket.gethostname() and isinstance(pid, int):
            if not _pid_alive(pid):
                return f"its process {pid} on this host is gone"
            now_start = _proc_start(pid)
            if record.get("pid_start") and now_start is not None and now_start != record["pid_start"]:
                return f"its pid {pid} on this host now belongs to another process"
        age = time.time() - st.st_mtime
        if age > self.stale_s:
            return f"not refreshed for {age:.0f} s (stale after {self.stale_s:.0f} s)"
        return None

    def holder(self) -> dict[str, Any] | None:
        """The record of the live holder (``{}`` when unreadable); None when free or stale."""
        record, st = self._read()
        if st is None or self.stale_reason(record, st) is not None:
            return None
        return record or {}

    # -- taking and giving back -----------------------------------------------------------------

    def _create(self) -> bool:
        """Create the lock file exclusively with this process's record; False when it exists."""
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        except OSError as e:
            if _disk_full(e):
                raise DiskFullError(self.path, None) from e
            raise
        now = time.time()
        pid = os.getpid()
        record = {"host": socket.gethostname(), "pid": pid, "pid_start": _proc_start(pid),
                  "started": now, "token": uuid.uuid4().hex, "label": self.label,
                  "started_utc": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(now))}
        data = json_bytes(record)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        except OSError as e:
            os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            if _disk_full(e):
                raise DiskFullError(self.path, len(data)) from e
            raise
        os.close(fd)
        self.record = record
        self._start_refresh()
        return True

    def _take_over(self) -> bool:
        """Take a stale lock over under the ``.takeover`` mutex; False when not taken (the
        mutex is busy, or the lock turned out live or free when judged again)."""
        mutex = self.path.with_name(self.path.name + ".takeover")
        try:
            fd = os.open(mutex, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            with contextlib.suppress(OSError):
                if time.time() - os.stat(mutex).st_mtime > TAKEOVER_STALE_S:
                    os.unlink(mutex)
            return False
        except OSError as e:
            if _disk_full(e):
                raise DiskFullError(mutex, None) from e
            raise
        os.close(fd)
        try:
            record, st = self._read()
            reason = None if st is None else self.stale_reason(record, st)
            if reason is None:
                return False
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            warnings.warn(f"taking over the stale lock {self.path} of {describe_holder(record)}: "
                          f"{reason}", StaleLockWarning, stacklevel=4)
            return self._create()
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(mutex)

    def try_acquire(self) -> dict[str, Any] | None:
        """Take the lock when it is free or stale (a stale one with a warning) and return None;
        else leave it alone and return the live holder's record (``{}`` when unreadable)."""
        if self.held:
            raise RuntimeError(f"{self} is already held by this object")
        make_dirs(self.path.parent)
        for _ in range(100):  # each pass waits out another process's takeover (milliseconds)
            if self._create():
                return None
            record, st = self._read()
            if st is None:
                continue  # released meanwhile
            if self.stale_reason(record, st) is None:
                return record or {}
            if self._take_over():
                return None
            time.sleep(0.05)
        return self.holder() or {}

    def acquire(self, poll_s: float = 1.0,
                on_wait: Callable[[dict[str, Any]], None] | None = None) -> None:
        """Take the lock, waiting while a live holder has it (``on_wait(record)`` once, first)."""
        waited = False
        while (record := self.try_acquire()) is not None:
            if not waited and on_wait is not None:
                on_wait(record)
            waited = True
            time.sleep(poll_s)

    def refresh(self) -> bool:
        """Set the lock file's mtime to now; False when the file no longer holds this claim."""
        record, _ = self._read()
        if not self.record or not record or record.get("token") != self.record["token"]:
            return False
        with contextlib.suppress(OSError):
            os.utime(self.path)
        return True

    def _start_refresh(self) -> None:
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(self.refresh_s):
                if not self.refresh():
                    warnings.warn(f"the lock {self.path} was taken over by another process while "
                                  "this one held it (silent for longer than the stale time); "
                                  "results are written atomically, so its files stay whole",
                                  StaleLockWarning, stacklevel=1)
                    return

        self._stop = stop
        self._thread = threading.Thread(target=beat, name=f"refresh {self.path.name}", daemon=True)
        self._thread.start()

    def release(self) -> None:
        """Stop refreshing and remove the lock file if it still holds this claim."""
        if self.record is None:
            return
        if self._stop is not None:
            self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        record, _ = self._read()
        if record and record.get("token") == self.record["token"]:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
        self.record, self._stop, self._thread = None, None, None

    def __enter__(self) -> FileLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
