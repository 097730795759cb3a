"""File side effects in one place: atomic writes, checksums, JSON.

Every result file is written to a temporary file in the same folder and moved into place with
``os.replace`` (atomic on POSIX), so an interrupted run never leaves a half-written result that
a rerun would take as finished.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; results are meant to be shared
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode())


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text())


def save_torch(path: str | os.PathLike, obj: Any) -> None:
    """``torch.save`` atomically (tensors, dicts of tensors and plain values only)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    write_bytes(path, buf.getvalue())


def load_torch(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """Load with ``weights_only=True``: never unpickle arbitrary objects."""
    return torch.load(path, map_location=map_location, weights_only=True)


def sha256_tensor(t: torch.Tensor) -> str:
    """sha256 of a tensor's raw bytes (C-contiguous, on the CPU), with its dtype and shape."""
    t = t.detach().to("cpu").contiguous()
    h = hashlib.sha256(f"{t.dtype}:{tuple(t.shape)}:".encode())
    h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
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


class CellFiles:
    """The files of one cell folder: their names in one place, every write atomic.

    ``train.json`` and ``eval.json`` are written last by their stage: a cell is trained when
    ``train.json`` exists and evaluated when ``eval.json`` exists (with the evaluation's key).
    """

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

    def save_state(self, state: dict[str, Any]) -> None:
        save_torch(self.state, state)

    def save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        save_torch(self.checkpoint, checkpoint)

    def finish_training(self, summary: dict[str, Any]) -> None:
        """Write ``train.json`` (the cell is finished) and drop the resume state."""
        write_json(self.train_summary, summary)
        self.state.unlink(missing_ok=True)

    def finish_evaluation(self, metrics: Any, confidences: Any | None,
                          examples: dict[str, torch.Tensor], summary: dict[str, Any]) -> None:
        """Write the evaluation's tables (pandas frames) and examples, then ``eval.json``."""
        with atomic_path(self.metrics) as tmp:
            metrics.to_csv(tmp, index=False)
        if confidences is not None:
            with atomic_path(self.confidences) as tmp:
                confidences.to_parquet(tmp, index=False)
        if examples:
            save_torch(self.examples, examples)
        write_json(self.eval_summary, summary)
