"""Whether a cell's training converged: the per-cell rule and the run-level (family-wise) rule.

Outside the cell cache key on purpose: the trainer records the per-cell evidence (the last-quarter
validation gain, the images that turned right and wrong, the sign-test p-value) in
``train.json``; changing a rule here, or its message, retrains nothing.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch

from bench.stats import holm

CONVERGENCE_RULE = (
    "converged: the validation accuracy gained over the last quarter of the budget (from the last "
    "validation at or before 3/4 of it to the end) is below {gain:g}, or below two standard errors "
    "of that gain (paired over the same validation images: sqrt(b + c) / N, b and c the images "
    "that turned right and that turned wrong), i.e. there is no evidence of further improvement"
)


def convergence(history: list[list[float]], total: int, gain: float,
                before: torch.Tensor | None = None, after: torch.Tensor | None = None,
                ) -> tuple[bool | None, float | None, float | None]:
    """Whether training converged, by :data:`CONVERGENCE_RULE`.

    ``history`` rows are ``[step, loss, val_accuracy]`` (nan when not validated). ``before`` and
    ``after`` are the per-image correctness (bool) on the validation set at the last validation at
    or before 3/4 of the budget and at the end; without them the standard error is not known and
    only the ``gain`` threshold applies. Returns ``(converged, improvement, standard_error)``;
    ``(None, None, None)`` without those two validations.
    """
    points = [(int(s), a) for s, _, a in history if not math.isnan(a)]
    if not points or points[-1][0] != total:
        return None, None, None
    earlier = [a for s, a in points if s <= 0.75 * total]
    if not earlier:
        return None, None, None
    improvement = points[-1][1] - earlier[-1]
    se = None
    if before is not None and after is not None:
        turned_right, turned_wrong = discordant(before, after)
        se = math.sqrt(turned_right + turned_wrong) / before.numel()
    converged = improvement < gain or (se is not None and improvement < 2 * se)
    return converged, improvement, se


def discordant(before: torch.Tensor, after: torch.Tensor) -> tuple[int, int]:
    """Of the same images scored right/wrong (bool) twice: how many turned right, how many wrong."""
    return int((~before & after).sum()), int((before & ~after).sum())


def familywise_convergence(cells: pd.DataFrame, gain: float, alpha: float) -> list[bool | None]:
    """Convergence across a run's cells (rows of ``cells.csv``): a cell did not converge when
    Holm's procedure over the run's cells (:func:`bench.stats.holm`, family-wise error ``alpha``)
    rejects "no improvement" by its one-sided exact sign test (``val_improvement_p``, recorded
    by the trainer) and its last-quarter gain ``val_improvement`` is at least ``gain``.

    With one test per cell at a fixed level, a run of many truly converged cells would report some
    as still improving by chance (at 2 standard errors about 2.3 % each: 0.977^45 = 35 % that all
    45 pass); Holm's procedure keeps the chance of any such false alarm in the run at ``alpha``.
    A cell without a p-value (trained by an older version) keeps its own ``converged`` value.
    """
    pvals = (pd.to_numeric(cells["val_improvement_p"], errors="coerce").to_numpy(float)
             if "val_improvement_p" in cells else np.full(len(cells), np.nan))
    reject = holm(pvals, alpha)
    out: list[bool | None] = []
    for p, rej, r in zip(pvals, reject, cells.itertuples(), strict=True):
        if math.isnan(p):
            own = getattr(r, "converged", None)
            out.append(None if own is None or pd.isna(own) else bool(own))
        else:
            out.append(not (bool(rej) and r.val_improvement >= gain))
    return out
