"""The table of test-set kinds: lookups, order, sizes, and the modules that ask it.

Oracles: hand-written expectations (the kinds, the order, counts worked by hand) and the sets
themselves (``len(generate(...))`` of tiny real sets), never the table's own code.
"""

from __future__ import annotations

import dataclasses
import math
import re

import pytest
import torch

from bench.config import DataConfig
from bench.data.testsets import (
    find_set_kind,
    generate,
    order_set_names,
    set_kind,
    set_size,
    sets_where,
)
from bench.errors import BenchError

TINY = DataConfig(
    n_test=12, affnist_k=2, sweep_n=5,
    rotation_grid=(-30.0, 0.0, 30.0), scale_grid=(0.8, 1.2), shear_grid=(0.0, 0.2),
    translate_grid=(0.0, 4.0), scramble_grids=(2, 3),
)
NAMES = ("clean", "affnist", "sweep-rotation", "sweep-scale", "sweep-shear", "sweep-translate",
         "scramble-g2", "scramble-g3", "displaced", "overlap")

# name: (family, factor, grid, warped, scrambled, calibrated), written out by hand
EXPECTED = {
    "clean": ("clean", None, None, False, False, True),
    "affnist": ("affine", None, None, True, False, True),
    "affnist-real": ("real", None, None, False, False, True),
    "sweep-rotation": ("sweep", "rotation", None, True, False, False),
    "sweep-scale": ("sweep", "scale", None, True, False, False),
    "sweep-shear": ("sweep", "shear", None, True, False, False),
    "sweep-translate": ("sweep", "translate", None, True, False, False),
    "scramble-g2": ("scramble", None, 2, False, True, False),
    "scramble-g3": ("scramble", None, 3, False, True, False),
    "scramble-g12": ("scramble", None, 12, False, True, False),
    "displaced": ("displaced", None, None, False, True, False),
    "overlap": ("overlap", None, None, False, False, False),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_kind(name):
    k = set_kind(name)
    assert k.name == name
    assert (k.family, k.factor, k.grid, k.warped, k.scrambled, k.calibrated) == EXPECTED[name]
    assert find_set_kind(name) == k


@pytest.mark.parametrize("name", ["scramble-g1", "scramble-g02", "scramble-", "sweep-blur",
                                  "affNIST", "Clean", "scramble-g2x", ""])
def test_unknown_names(name):
    assert find_set_kind(name) is None
    with pytest.raises(BenchError) as err:
        set_kind(name)
    msg = str(err.value)
    assert "\n" not in msg and f"unknown test set '{name}'" in msg
    for known in ("clean", "affnist", "affnist-real", "sweep-rotation", "scramble-g<k>",
                  "displaced", "overlap"):
        assert known in msg


def test_order_is_the_tables_and_unknown_names_come_last():
    shuffled = ["overlap", "displaced", "zeta", "scramble-g3", "sweep-translate", "clean", "alpha",
                "scramble-g10", "affnist-real", "sweep-rotation", "scramble-g2", "affnist",
                "sweep-shear", "sweep-scale", "clean"]
    assert order_set_names(shuffled) == [
        "clean", "affnist", "affnist-real", "sweep-rotation", "sweep-scale", "sweep-shear",
        "sweep-translate", "scramble-g2", "scramble-g3", "scramble-g10", "displaced", "overlap",
        "alpha", "zeta"]
    assert sets_where(shuffled, lambda k: k.scrambled) == [
        "scramble-g2", "scramble-g3", "scramble-g10", "displaced"]
    assert sets_where(shuffled, lambda k: k.calibrated) == ["clean", "affnist", "affnist-real"]
    assert sets_where(["alpha"], lambda k: True) == []


def test_set_size_equals_the_generated_sets():
    for name in NAMES:
        assert set_size(TINY, name) == len(generate(name, TINY)), name


def test_set_size_hand_worked():
    # 12 digits; affNIST-style 12 x 2; sweeps 5 digits x grid points; one image per digit else
    hand = {"clean": 12, "affnist": 24, "sweep-rotation": 15, "sweep-scale": 10,
            "sweep-shear": 10, "sweep-translate": 10, "scramble-g2": 12, "scramble-g3": 12,
            "displaced": 12, "overlap": 12}
    assert {name: set_size(TINY, name) for name in NAMES} == hand
    # sweep_n above n_test: a sweep uses the n_test digits there are
    assert set_size(dataclasses.replace(TINY, sweep_n=50), "sweep-rotation") == 12 * 3
    # the default config: MNIST's 10,000 test digits, 32 transforms each (as affNIST)
    cfg = DataConfig()
    assert set_size(cfg, "affnist") == 320_000 and set_size(cfg, "clean") == 10_000
    # an unvalidated n_test above the MNIST test split: only its 10,000 digits exist
    assert set_size(dataclasses.replace(TINY, n_test=20_000), "scramble-g2") == 10_000


def test_set_size_of_the_real_files_and_of_names_the_config_cannot_make(tmp_path):
    with pytest.raises(BenchError, match="real_affnist"):
        set_size(TINY, "affnist-real")
    real = dataclasses.replace(TINY, real_affnist=str(tmp_path))
    assert set_size(real, "affnist-real") == 320_000  # 10,000 test digits x 32 (affNIST page)
    with pytest.raises(BenchError, match="unknown test set 'scramble-g4'"):
        set_size(TINY, "scramble-g4")  # a valid kind, but not in this config's scramble_grids


def test_contact_sheet_titles_follow_the_kind():
    from bench.data.sheets import describe, pick_examples

    titles = {name: describe(generate(name, TINY), 0) for name in NAMES}
    assert titles["clean"].isdigit()
    assert " r" in titles["affnist"] and "sx" in titles["affnist"] and "t(" in titles["affnist"]
    assert titles["sweep-rotation"].endswith("v=-30")
    assert titles["scramble-g2"].split()[1][0] == "p" and len(titles["scramble-g2"].split()[1]) == 5
    assert titles["displaced"].endswith("clip 0")
    assert re.fullmatch(r"\d \+\d a\([+-]\d,[+-]\d\) b\([+-]\d,[+-]\d\)", titles["overlap"])
    sweep = generate("sweep-scale", TINY)
    idx, cols = pick_examples(sweep, rows=3)
    assert cols == 2 and idx == [0, 5, 1, 6, 2, 7]  # digit r at each grid point, point-major


# --------------------------------------------------------------------------------------------
# evaluate.set_metrics asks the table which metrics a set gets


def _preds(pred: list[int], conf: float = 0.8, recon: bool = False):
    from bench.cell.evaluate import Predictions

    n = len(pred)
    scores = torch.full((n, 10), (1 - conf) / 9)
    scores[torch.arange(n), torch.tensor(pred)] = conf
    feats = torch.arange(n * 3, dtype=torch.float32).reshape(n, 3)
    return Predictions(scores, feats, torch.linspace(1, 2, n) if recon else None, None)


def _rows(name, preds, labels, params=None, intact=None):
    from bench.cell.evaluate import set_metrics

    rows = set_metrics(name, preds, torch.tensor(labels), params or {}, intact)
    return {(r["metric"], None if math.isnan(r["factor_value"]) else r["factor_value"]): r["value"]
            for r in rows}


def test_set_metrics_by_kind():
    labels = [1, 2, 0, 0]
    for name in ("clean", "affnist", "affnist-real"):
        rows = _rows(name, _preds([1, 2, 3, 4]), labels)
        assert set(rows) == {("accuracy", None), ("error", None), ("mean_confidence", None),
                             ("ece", None)}
        assert rows["accuracy", None] == 0.5 and rows["error", None] == 0.5  # 2 of 4 by hand
        assert rows["ece", None] == pytest.approx(0.3)  # one bin: |0.5 - 0.8|
    values = torch.tensor([0.0, 0.0, 30.0, 30.0])
    rows = _rows("sweep-rotation", _preds([1, 0, 0, 0]), labels, {"value": values})
    assert rows["accuracy", 0.0] == 0.5 and rows["accuracy", 30.0] == 1.0
    assert ("probe_r2", None) in rows and ("ece", None) not in rows
    for name in ("scramble-g2", "displaced"):
        rows = _rows(name, _preds([1, 0, 0, 0], 0.6, recon=True), labels,
                     intact=_preds([1, 2, 0, 0], 0.9, recon=True))
        assert rows["accuracy", None] == 0.75 and ("ece", None) not in rows  # 3 of 4
        assert rows["mean_confidence_intact", None] == pytest.approx(0.9)
        assert rows["auroc_confidence", None] == 1.0  # every intact digit more confident
        assert ("auroc_recon", None) in rows
    with pytest.raises(BenchError, match="unknown test set"):
        _rows("sweep-blur", _preds([1]), [1])
