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
import tempfile
from collections.abc import Iterator
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


def write_parquet(path: str | os.PathLike, frame: Any, compression: str = "snappy") -> str:
    """A pandas frame as Parquet (no index, ``compression`` as pyarrow names it), atomically;
    returns the file's sha256."""
    buf = io.BytesIO()
    frame.to_parquet(buf, index=False, compression=compression)
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
