"""File side effects in one place: atomic writes, checksums, JSON, lock files.

Every result file is written to a temporary file in the same folder and moved into place with
``os.replace`` (atomic on POSIX), so an interrupted run never leaves a half-written result that
a rerun would take as finished. A write that fails for lack of space (``errno.ENOSPC``) removes
its temporary file and raises :class:`DiskFullError`, one line naming the path and the bytes.

Lock files (:class:`FileLock`) let several processes, on one machine or on the nodes of a
cluster sharing the folder, split work without doing it twice: see :class:`FileLock` for the
protocol and the rule by which a lock left behind by a dead process is taken over.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import socket
import tempfile
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch


class DiskFullError(OSError):
    """A write failed for lack of space (``errno.ENOSPC``); the message is one line naming the
    file and the bytes that were being written. Its temporary file has been removed."""

    def __init__(self, path: str | os.PathLike, nbytes: int | None):
        self.path, self.nbytes = str(path), nbytes
        size = "an unknown number of bytes" if nbytes is None else f"{nbytes:,} bytes"
        super().__init__(errno.ENOSPC, f"no space left on the device writing {path} ({size}); "
                                       "free some space and rerun: finished results are kept")

    def __str__(self) -> str:  # one line, without OSError's "[Errno 28]" prefix
        return self.strerror

    def __reduce__(self):  # pickles across worker processes with its own arguments
        return (type(self), (self.path, self.nbytes))


def _disk_full(e: BaseException) -> bool:
    return isinstance(e, OSError) and e.errno == errno.ENOSPC and not isinstance(e, DiskFullError)


def make_dirs(folder: Path) -> None:
    """``mkdir -p``; a lack of space is a :class:`DiskFullError` naming the folder."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        if _disk_full(e):
            raise DiskFullError(folder, 0) from e
        raise


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, nbytes: int | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it onto ``path`` only if the block succeeds.

    The temporary file is removed whatever happens. A lack of space (``ENOSPC``) anywhere in
    the block becomes a :class:`DiskFullError` naming ``path`` and ``nbytes`` (the bytes being
    written, when the caller knows them; else the size the temporary file had reached).
    """
    path = Path(path)
    make_dirs(path.parent)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:  # no free inode
        if _disk_full(e):
            raise DiskFullError(path, nbytes) from e
        raise
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; results are meant to be shared
        os.replace(tmp, path)
    except OSError as e:
        if _disk_full(e):
            if nbytes is None:
                with contextlib.suppress(OSError):
                    nbytes = os.stat(tmp).st_size
            raise DiskFullError(path, nbytes) from e
        raise
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _write_file(tmp: Path, data: bytes) -> None:
    """Put ``data`` on the disk at ``tmp`` (fsynced): the one place where result bytes are
    written (tests replace it to simulate a full disk)."""
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def write_bytes(path: str | os.PathLike, data: bytes) -> str:
    """Write ``data`` to ``path`` atomically; returns its sha256 (hex)."""
    with atomic_path(path, nbytes=len(data)) as tmp:
        _write_file(tmp, data)
    return hashlib.sha256(data).hexdigest()


def write_text(path: str | os.PathLike, text: str) -> str:
    return write_bytes(path, text.encode())


def json_bytes(obj: Any) -> bytes:
    """How every JSON file of the project is written: indented, keys sorted, one final newline."""
    return (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode()


def write_json(path: str | os.PathLike, obj: Any) -> str:
    return write_bytes(path, json_bytes(obj))


def write_csv(path: str | os.PathLike, frame: Any) -> str:
    """A pandas frame as CSV (no index), atomically; returns the file's sha256."""
    return write_bytes(path, frame.to_csv(index=False).encode())


def write_parquet(path: str | os.PathLike, frame: Any) -> str:
    """A pandas frame as Parquet (no index), atomically; returns the file's sha256."""
    buf = io.BytesIO()
    frame.to_parquet(buf, index=False)
    return write_bytes(path, buf.getvalue())


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text())


def save_torch(path: str | os.PathLike, obj: Any) -> str:
    """``torch.save`` atomically (tensors, dicts of tensors and plain values only); returns the
    file's sha256."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return write_bytes(path, buf.getvalue())


def load_torch(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """Load with ``weights_only=True``: never unpickle arbitrary objects."""
    return torch.load(path, map_location=map_location, weights_only=True)


def sha256_tensor(t: torch.Tensor) -> str:
    """sha256 of a tensor's raw bytes (C-contiguous, on the CPU), with its dtype and shape."""
    t = t.detach().to("cpu")
    h = hashlib.sha256(f"{t.dtype}:{tuple(t.shape)}:".encode())
    # reshape(-1) of a C-contiguous copy: the same bytes for any layout, and defined for 0-d
    # tensors and for channels-last tensors with size-1 dimensions (which .view(uint8) refuses).
    flat = t.contiguous().reshape(-1).clone() if t.numel() else t.reshape(-1)
    h.update(flat.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def stable_hash(*parts: Any) -> str:
    """A short hex hash of JSON-serialisable parts, independent of dict order and Python's hash seed."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed from names and numbers (benchopt-style): adding a model changes no other seed."""
    return int(stable_hash("seed", *parts), 16) & ((1 << 63) - 1)


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


# --------------------------------------------------------------------------------------------
# A cell's files


def file_record(path: str | os.PathLike) -> dict[str, Any]:
    """``{"sha256": ..., "bytes": ...}`` of a file, as recorded when it is written."""
    return {"sha256": sha256_file(path), "bytes": os.stat(path).st_size}


class CellFiles:
    """The files of one cell folder: their names in one place, every write atomic.

    ``train.json`` and ``eval.json`` are written last by their stage: a cell is trained when
    ``train.json`` exists and evaluated when ``eval.json`` exists (with the evaluation's key).

    Checksums: ``train.json`` records the sha256 and size of ``checkpoint.pt`` (key ``files``),
    ``eval.json`` those of ``metrics.csv``, ``confidences.parquet`` and ``examples.pt``, and
    ``files.json``, written after each marker, those of every file of the cell including the
    two markers. :meth:`damaged` checks them; :meth:`discard` removes a stage to rebuild it.
    Cells written before checksums were recorded have no ``files`` key and are not checked.
    ``lock.json`` is the cell's :class:`FileLock` (taken by the runner while the cell runs).
    """

    STAGES = ("train", "eval")

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)

    def __repr__(self) -> str:
        return f"CellFiles({str(self.folder)!r})"

    @property
    def state(self) -> Path:  # everything needed to resume training; deleted when it ends
        return self.folder / "state.pt"

    @property
    def checkpoint(self) -> Path:  # the selected weights, with the spec
        return self.folder / "checkpoint.pt"

    @property
    def train_summary(self) -> Path:
        return self.folder / "train.json"

    @property
    def metrics(self) -> Path:
        return self.folder / "metrics.csv"

    @property
    def confidences(self) -> Path:
        return self.folder / "confidences.parquet"

    @property
    def examples(self) -> Path:
        return self.folder / "examples.pt"

    @property
    def eval_summary(self) -> Path:
        return self.folder / "eval.json"

    @property
    def checksums(self) -> Path:  # sha256 and size of every file, written after each marker
        return self.folder / "files.json"

    @property
    def lock(self) -> Path:  # the runner's claim on the cell while it runs (FileLock)
        return self.folder / "lock.json"

    def marker(self, stage: str) -> Path:
        """The file whose existence says ``stage`` ("train" or "eval") is finished."""
        return {"train": self.train_summary, "eval": self.eval_summary}[stage]

    def outputs(self, stage: str) -> tuple[Path, ...]:
        """The files ``stage`` writes before its marker."""
        if stage == "train":
            return (self.checkpoint,)
        return (self.metrics, self.confidences, self.examples)

    def save_state(self, state: dict[str, Any]) -> None:
        save_torch(self.state, state)

    def save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        save_torch(self.checkpoint, checkpoint)

    @staticmethod
    def _entry(path: Path, sha256: str) -> dict[str, Any]:
        """The checksum record of a file just written (``sha256`` as its writer returned it)."""
        return {"sha256": sha256, "bytes": path.stat().st_size}

    def _record(self, entries: dict[str, dict[str, Any] | None]) -> None:
        """Merge ``entries`` into ``files.json`` (None removes a name)."""
        try:
            files = dict(read_json(self.checksums).get("files", {}))
        except (OSError, ValueError, AttributeError):
            files = {}
        for name, entry in entries.items():
            if entry is None:
                files.pop(name, None)
            else:
                files[name] = entry
        write_json(self.checksums, {"files": files, "about": "sha256 and size in bytes of each "
                                    "file of the cell, recorded when it was written"})

    def finish_training(self, summary: dict[str, Any]) -> None:
        """Write ``train.json`` (the cell is finished) with the checkpoint's checksum, record
        both in ``files.json``, and drop the resume state."""
        files = {self.checkpoint.name: file_record(self.checkpoint)}
        entry = self._entry(self.train_summary,
                            write_json(self.train_summary, {**summary, "files": files}))
        self._record({**files, self.train_summary.name: entry})
        self.state.unlink(missing_ok=True)

    def finish_evaluation(self, metrics: Any, confidences: Any | None,
                          examples: dict[str, torch.Tensor], summary: dict[str, Any]) -> None:
        """Write the evaluation's tables (pandas frames) and examples, then ``eval.json`` with
        their checksums, then ``files.json``. An older ``eval.json`` goes first: interrupted
        here, the cell reads as not evaluated rather than as damaged."""
        self.eval_summary.unlink(missing_ok=True)
        files = {self.metrics.name: self._entry(self.metrics, write_csv(self.metrics, metrics))}
        if confidences is not None:
            files[self.confidences.name] = self._entry(
                self.confidences, write_parquet(self.confidences, confidences))
        else:  # not this evaluation's: an older evaluation's file must not be collected
            self.confidences.unlink(missing_ok=True)
        if examples:
            files[self.examples.name] = self._entry(self.examples,
                                                    save_torch(self.examples, examples))
        else:
            self.examples.unlink(missing_ok=True)
        entry = self._entry(self.eval_summary,
                            write_json(self.eval_summary, {**summary, "files": files}))
        gone = {p.name: None for p in self.outputs("eval") if p.name not in files}
        self._record({**gone, **files, self.eval_summary.name: entry})

    def damaged(self, stage: str, outputs: bool = True) -> str | None:
        """What is wrong with the finished ``stage`` ("train" or "eval"), in one line naming the
        file and what was expected; None when the stage is whole, or not finished at all.

        The marker must parse as a JSON object and match ``files.json`` when that records it;
        with ``outputs``, each file the marker lists must exist with the recorded size and
        sha256 (``outputs=False`` checks the marker alone, for a reader that needs only it).
        """
        marker = self.marker(stage)
        if not marker.is_file():
            return None
        try:
            recorded = read_json(self.checksums).get("files", {})
        except (OSError, ValueError, AttributeError):
            recorded = {}
        problem = _mismatch(marker, recorded.get(marker.name), self.checksums.name)
        if problem:
            return problem
        try:
            summary = read_json(marker)
        except (OSError, ValueError) as e:
            return f"{marker}: expected JSON, found unreadable text ({type(e).__name__})"
        if not isinstance(summary, dict):
            return f"{marker}: expected a JSON object, found {type(summary).__name__}"
        listed = summary.get("files")
        if listed is None or not outputs:
            return None  # (None: written before checksums were recorded, not checked)
        for name, entry in listed.items():
            problem = _mismatch(self.folder / name, entry, marker.name)
            if problem:
                return problem
        return None

    def discard(self, stage: str) -> None:
        """Remove the files of ``stage`` (its marker first) so that it runs again; discarding
        training discards the evaluation too (it scored those weights)."""
        stages = ("eval", "train") if stage == "train" else ("eval",)
        paths = [self.marker(s) for s in stages] + [p for s in stages for p in self.outputs(s)]
        if stage == "train":
            paths.append(self.state)
        for p in paths:
            p.unlink(missing_ok=True)
        if self.checksums.is_file():
            self._record({p.name: None for p in paths})


def _mismatch(path: Path, entry: dict[str, Any] | None, source: str) -> str | None:
    """How ``path`` differs from its recorded ``entry`` (size, then sha256); None when equal or
    when nothing is recorded."""
    if not entry:
        return None
    if not path.is_file():
        return f"{path}: missing, recorded in {source}"
    size, expected = path.stat().st_size, entry.get("bytes")
    if size != expected:
        return f"{path}: {size:,} bytes, expected {expected} as recorded in {source}"
    sha = sha256_file(path)
    if sha != entry.get("sha256"):
        return (f"{path}: sha256 {sha[:12]}, expected {str(entry.get('sha256'))[:12]} as recorded "
                f"in {source}")
    return None
