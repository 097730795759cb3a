"""A cell folder's files: their names, completion markers and checksums.

Every file a stage writes is recorded with its SHA-256 in the stage's marker; a file that no
longer matches is damaged (:meth:`CellFiles.damaged`) and its stage is rebuilt.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from bench.io import read_json, save_torch, sha256_file, write_csv, write_json, write_parquet

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
    ``eval.json`` those of ``metrics.csv``, ``predictions.parquet`` (one row per test image, zstd)
    and ``examples.pt``, and
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
    def predictions(self) -> Path:  # the per-image store (bench.cell.evaluate.prediction_frame)
        return self.folder / "predictions.parquet"

    @property
    def legacy_confidences(self) -> Path:  # what evaluations before the store wrote instead
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
        return (self.metrics, self.predictions, self.examples)

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

    def finish_evaluation(self, metrics: Any, predictions: Any | None,
                          examples: dict[str, torch.Tensor], summary: dict[str, Any]) -> None:
        """Write the evaluation's tables (pandas frames) and examples, then ``eval.json`` with
        their checksums, then ``files.json``. An older ``eval.json`` goes first: interrupted
        here, the cell reads as not evaluated rather than as damaged."""
        self.eval_summary.unlink(missing_ok=True)
        files = {self.metrics.name: self._entry(self.metrics, write_csv(self.metrics, metrics))}
        self.legacy_confidences.unlink(missing_ok=True)
        if predictions is not None:
            files[self.predictions.name] = self._entry(
                self.predictions, write_parquet(self.predictions, predictions, compression="zstd"))
        else:  # not this evaluation's: an older evaluation's file must not be collected
            self.predictions.unlink(missing_ok=True)
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
