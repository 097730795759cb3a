"""Reading a run folder: the schemas of ``metrics.csv`` and ``cells.csv``, their readers, and the
names of the setups and reference models the report compares against."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.cell.plan import AFFNIST_SETUP
from bench.data.testsets import (
    SET_KINDS,
)
from bench.errors import BenchError

METRICS_COLUMNS = ("setup", "model", "n", "seed", "test_set", "factor_value", "metric", "value")
CELLS_COLUMNS = ("setup", "model", "n", "seed")  # the key columns cells.csv must have
MAIN_SETUP = AFFNIST_SETUP  # the 40x40 setup, evaluated on every test set
MNIST_SETUP = "mnist28"  # the paper's MNIST table
REFERENCE = "capsnet"  # every difference and ratio is taken against it
MAXPOOL = "convnet-maxpool"  # the "traditional ConvNet" of the claims
# The CapsNet's own 9x9 trunk with a fully connected head (no capsule layer, squash,
# margin loss or reconstruction): an ablation of the capsule layer, not Gu et al.'s ConvNet.
K9 = "convnet-k9"
# Gu, Tresp & Hu (2021)'s ConvNet (9x9 kernels, average pooling): the counter-claim's model,
# read when a run has its cells.
GU = "convnet-gu"


# --------------------------------------------------------------------------------------------
# Reading


def read_metrics(run_dir: Path) -> pd.DataFrame:
    """``metrics.csv`` with its schema checked; a missing file or column is a BenchError."""
    path = Path(run_dir) / "metrics.csv"
    if not Path(run_dir).is_dir():
        raise BenchError(f"report: expected a run folder, found nothing at {run_dir}")
    if not path.is_file():
        raise BenchError(f"report: expected {path} (run the eval stage first), not found")
    try:
        df = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise BenchError(f"report: cannot parse {path}: {str(e).splitlines()[0]}") from None
    missing = [c for c in METRICS_COLUMNS if c not in df.columns]
    if missing:
        raise BenchError(f"report: {path} lacks columns {missing} (has {list(df.columns)})")
    df["factor_value"] = pd.to_numeric(df["factor_value"], errors="coerce")
    df["value"] = pd.to_numeric(df["value"], errors="coerce")
    df["n"] = df["n"].astype(np.int64)
    return df


def _flag(x: Any) -> bool | None:
    """A boolean cell of a CSV (True/False/1/0, any case), None when not recorded."""
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return None
    text = str(x).strip().lower()
    return {"true": True, "1": True, "1.0": True, "false": False, "0": False,
            "0.0": False}.get(text)


def read_cells(path: Path) -> pd.DataFrame:
    """``cells.csv`` (one row per cell: steps, convergence, labelled images, seconds).

    ``converged`` becomes True, False or None (not recorded); a missing key column is an error.
    """
    df = pd.read_csv(path)
    missing = [c for c in CELLS_COLUMNS if c not in df.columns]
    if missing:
        raise BenchError(f"report: {path} lacks columns {missing}")
    df["n"] = df["n"].astype(np.int64)
    df["seed"] = df["seed"].astype(np.int64)
    df["converged"] = pd.Series([_flag(x) for x in df["converged"]] if "converged" in df
                                else [None] * len(df), index=df.index, dtype=object)
    for col in ("steps", "val_improvement", "labelled_images"):
        df[col] = pd.to_numeric(df[col], errors="coerce") if col in df else math.nan
    return df


def _read_confidences(path: Path) -> pd.DataFrame:
    """The rows the report draws (scrambled sets and their intact twins), only needed columns.

    A full run holds one row per test image per cell (millions): filtering while reading keeps
    the report's memory small.
    """
    return pd.read_parquet(
        path, columns=["setup", "model", "n", "seed", "test_set", "confidence", "intact"],
        filters=[("test_set", "not in", [k.name for k in SET_KINDS if not k.scrambled])],
    )


def _read_optional(path: Path, reader: Callable[[Path], Any], notes: list[str]) -> Any:
    if not path.is_file():
        notes.append(f"`{path.name}` absent: the parts that need it are skipped.")
        return None
    try:
        return reader(path)
    except Exception as e:  # a corrupt optional file must not stop the rest of the report
        notes.append(f"`{path.name}` unreadable ({type(e).__name__}: "
                     f"{str(e).splitlines()[0] if str(e) else ''}): the parts that need it "
                     "are skipped.")
        return None
