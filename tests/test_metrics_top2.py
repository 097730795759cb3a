"""The top-2 read-out of two overlapping digits (Sabour et al. 2017, Sec. 6) and its rows.

Oracles: score matrices whose top two classes are written out by hand, and counts worked by hand.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bench.cell.evaluate import Predictions, prediction_frame, set_metrics
from bench.errors import BenchError
from bench.metrics import top2_hits

# Three images, ten classes. Top two by hand: row 0 {3, 7}; row 1 {2, 5}; row 2 {0, 9}.
SCORES = np.array([
    [0.01, 0.02, 0.03, 0.90, 0.04, 0.05, 0.06, 0.80, 0.07, 0.08],
    [0.10, 0.20, 0.70, 0.30, 0.10, 0.60, 0.10, 0.10, 0.10, 0.10],
    [0.50, 0.10, 0.10, 0.10, 0.10, 0.10, 0.10, 0.10, 0.10, 0.40],
])
LABEL_A = [7, 2, 1]  # row 0: in; row 1: in; row 2: out (1 is not in {0, 9})
LABEL_B = [3, 4, 9]  # row 0: in; row 1: out (4 is not in {2, 5}); row 2: in


def test_top2_hand_worked():
    both, hit_a, hit_b = top2_hits(SCORES, LABEL_A, LABEL_B)
    assert hit_a.tolist() == [True, True, False]
    assert hit_b.tolist() == [True, False, True]
    assert both.tolist() == [True, False, False]  # rows 1 and 2: only one digit in the top two
    assert both.dtype == bool and hit_a.dtype == bool and hit_b.dtype == bool


def test_top2_accepts_tensors_and_order_of_the_two_does_not_matter():
    both, hit_a, hit_b = top2_hits(torch.tensor(SCORES), torch.tensor(LABEL_B),
                                   torch.tensor(LABEL_A))
    assert both.tolist() == [True, False, False]
    assert hit_a.tolist() == [True, False, True] and hit_b.tolist() == [True, True, False]


def test_top2_shapes_are_checked():
    with pytest.raises(BenchError, match="C >= 2"):
        top2_hits(np.ones((3, 1)), [0, 0, 0], [0, 0, 0])
    with pytest.raises(BenchError, match="same length"):
        top2_hits(SCORES, [1, 2], [3, 4, 5])


def _preds(scores: np.ndarray) -> Predictions:
    s = torch.tensor(scores, dtype=torch.float32)
    return Predictions(s, torch.zeros(len(s), 2), None, None)


def _rows(name, scores, labels, params):
    rows = set_metrics(name, _preds(scores), torch.tensor(labels), params, None)
    return {r["metric"]: r["value"] for r in rows if math.isnan(r["factor_value"])}


def test_overlap_rows_by_hand():
    params = {"source": torch.arange(3), "label2": torch.tensor(LABEL_B)}
    rows = _rows("overlap", SCORES, LABEL_A, params)
    assert set(rows) == {"accuracy", "error", "mean_confidence", "top2_accuracy", "digit_recall"}
    assert rows["top2_accuracy"] == pytest.approx(1 / 3)  # row 0 only
    assert rows["digit_recall"] == pytest.approx(4 / 6)  # 2 + 1 + 1 of the 6 digits
    # the set's accuracy is its top-2 read-out (row 0 only), not top-1 against digit A
    assert rows["accuracy"] == pytest.approx(1 / 3)
    assert rows["error"] == pytest.approx(2 / 3)
    # other sets get no top-2 rows
    assert "top2_accuracy" not in _rows("clean", SCORES, LABEL_A, {"source": torch.arange(3)})


def test_store_column_label2_recomputes_top2():
    params = {"source": torch.arange(3), "source2": torch.tensor([4, 5, 6]),
              "label2": torch.tensor(LABEL_B), "shift": torch.zeros(3, 2, 2, dtype=torch.long)}
    frame = prediction_frame("overlap", _preds(SCORES), torch.tensor(LABEL_A), params)
    assert frame["label2"].dtype == np.int8 and frame["label2"].tolist() == LABEL_B
    both = [{p, s} == {a, b} for p, s, a, b in
            zip(frame["pred"], frame["second"], frame["label"], frame["label2"], strict=True)]
    assert both == [True, False, False]  # as top2_hits
    assert frame["correct"].tolist() == both  # the store's read-out is the top-2 one
    clean = prediction_frame("clean", _preds(SCORES), torch.tensor(LABEL_A),
                             {"source": torch.arange(3)})
    assert clean["label2"].dtype == np.int8 and clean["label2"].tolist() == [-1, -1, -1]
