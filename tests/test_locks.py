"""Lock files: a dead holder's lock is taken over with a warning, another host's only when stale,
a held lock is refreshed and exclusive."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.locks import FileLock, StaleLockWarning


def _leftovers(folder: Path) -> list[Path]:
    """Lock files and temporary files left anywhere under ``folder``."""
    return sorted(p for p in folder.rglob("*")
                  if p.name.endswith((".tmp", ".lock", ".takeover")) or p.name == "lock.json")


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _write_lock(path: Path, host: str, pid: int, age_s: float = 0.0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"host": host, "pid": pid, "started": time.time() - age_s,
                                "started_utc": "then", "token": "theirs", "label": "old run"}))
    os.utime(path, (time.time() - age_s, time.time() - age_s))


def test_a_lock_of_a_dead_process_on_this_host_is_taken_over_with_a_warning(tmp_path):
    path = tmp_path / "lock.json"
    pid = _dead_pid()
    _write_lock(path, socket.gethostname(), pid)
    lock = FileLock(path)
    with pytest.warns(StaleLockWarning, match=f"pid {pid}.*is gone"):
        assert lock.try_acquire() is None
    assert json.loads(path.read_text())["pid"] == os.getpid()
    lock.release()
    assert not path.exists() and not _leftovers(tmp_path)


def test_a_lock_from_another_host_is_stale_only_when_not_refreshed(tmp_path):
    path = tmp_path / "lock.json"
    _write_lock(path, "another-host", 1, age_s=60)
    assert FileLock(path).try_acquire()["host"] == "another-host"  # live: left alone
    _write_lock(path, "another-host", 1, age_s=11 * 60)  # our stale time is 10 minutes
    lock = FileLock(path)
    with pytest.warns(StaleLockWarning, match=r"host another-host pid 1.*not refreshed for 66\d s"):
        assert lock.try_acquire() is None
    lock.release()


def test_a_held_lock_is_refreshed_and_exclusive(tmp_path):
    path = tmp_path / "lock.json"
    a = FileLock(path, refresh_s=0.05)
    assert a.try_acquire() is None
    os.utime(path, (0, 0))  # as if never refreshed: the refresh thread brings it back
    deadline = time.monotonic() + 10
    while path.stat().st_mtime == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert path.stat().st_mtime > 0
    b = FileLock(path)
    assert b.try_acquire()["pid"] == os.getpid()  # held by a live process: b must not take it
    a.release()
    assert b.try_acquire() is None
    b.release()
