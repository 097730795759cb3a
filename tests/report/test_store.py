"""The per-image store: it round-trips through Parquet, the report's accuracies and
kept-if-intact-correct recomputed from it equal what evaluation's metric code writes, and the
scoreboard's seeds-and-digits interval widens a seed-only one that excludes 0."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from bench.cell import evaluate
from bench.io import write_parquet
from bench.report import store as store_mod
from bench.report.build import build_report

N = 12  # digits


def _preds(rng: np.random.Generator, labels: torch.Tensor) -> evaluate.Predictions:
    """Random scores, the true class lifted to the top on about 70 % of the images."""
    rows = len(labels)
    scores = torch.from_numpy(rng.random((rows, 10))).float()
    lift = torch.from_numpy(rng.random(rows) < 0.7)
    scores[torch.arange(rows)[lift], labels[lift]] += 1.0
    scores = scores / scores.max()
    return evaluate.Predictions(scores, torch.zeros(rows, 4), None, None, scores.clone())


def _sets(rng):
    src2 = torch.arange(N).repeat_interleave(2)
    return {
        "clean": {"source": torch.arange(N)},
        "affnist": {"source": src2, "angle_deg": torch.from_numpy(rng.normal(size=2 * N)),
                    "tx": torch.from_numpy(rng.normal(size=2 * N))},
        "sweep-rotation": {"source": torch.arange(N).repeat(3),
                           "value": torch.tensor([-30.0, 0.0, 30.0]).repeat_interleave(N),
                           "fits": torch.ones(3 * N, dtype=torch.bool)},
        "scramble-g2": {"source": torch.arange(N),
                        "perm": torch.stack([torch.randperm(4) for _ in range(N)])},
        "displaced": {"source": torch.arange(N), "clipped": torch.zeros(N, dtype=torch.bool)},
    }


def test_store_round_trips_and_recomputes_the_metrics(tmp_path):
    rng = np.random.default_rng(0)
    labels_of_digit = torch.from_numpy(rng.integers(0, 10, N))
    frames, rows = [], []
    preds_by_set = {}
    for name, params in _sets(rng).items():
        labels = labels_of_digit[params["source"]]
        p = _preds(rng, labels)
        preds_by_set[name] = (p, labels, params)
        frames.append(evaluate.prediction_frame(name, p, labels, params))
    clean_p, clean_labels, _ = preds_by_set["clean"]
    for name, (p, labels, params) in preds_by_set.items():
        intact = (evaluate._subset(clean_p, params["source"])
                  if name in ("scramble-g2", "displaced") else None)
        rows += evaluate.set_metrics(name, p, labels, params, intact)
    ident = {"setup": "affnist", "model": "capsnet", "n": 100, "seed": 3}
    store = evaluate.store_frame(frames, ident)
    write_parquet(tmp_path / "p.parquet", store, compression="zstd")
    back = pd.read_parquet(tmp_path / "p.parquet")
    pd.testing.assert_frame_equal(back, store)
    assert str(back["label"].dtype) == "int8" and str(back["confidence"].dtype) == "float32"
    assert list(back.loc[back["test_set"] == "affnist", "transform"][:4]) == [0, 1, 0, 1]

    read = store_mod.read_store(tmp_path / "p.parquet")
    acc = store_mod.accuracy_rows(read)
    table = pd.DataFrame(rows)
    want = table[table["metric"] == "accuracy"]
    for r in want.itertuples():
        got = acc[(acc["test_set"] == r.test_set)
                  & ((acc["factor_value"] == r.factor_value)
                     | (acc["factor_value"].isna() & math.isnan(r.factor_value)))]
        assert len(got) == 1 and got["value"].iloc[0] == pytest.approx(r.value)
    # kept-if-intact-correct from the store equals the evaluation's row
    _, tables = store_mod.digit_tables(read, "affnist", {
        t: store_mod.kept_part(t) for t in ("scramble-g2", "displaced")})
    for t in ("scramble-g2", "displaced"):
        v = table[(table["test_set"] == t)
                  & (table["metric"] == "kept_given_intact_correct")]["value"].iloc[0]
        assert tables[t].values()[0] == pytest.approx(v)


def _constructed_store_run(root):
    """Two models, 5 seeds, one n, 200 digits, every digit correct intact. Arrangement
    specificity per digit (kept displaced - kept scrambled): the CapsNet keeps 110 of the
    displaced digits and 100 of the scrambled ones (one digit flipped per seed), the ConvNet
    100 and 100, at random places: the effect is 0.05 (0.045-0.055 per seed, so the seed SE is
    tiny), while the per-digit differences spread by about 1: the digits' SE is about 0.07."""
    rng = np.random.default_rng(5)
    d = 200

    def kept(count: int) -> np.ndarray:  # exactly ``count`` digits kept, at random places
        out = np.zeros(d, dtype=bool)
        out[rng.permutation(d)[:count]] = True
        return out

    caps_disp, caps_scr, conv_disp, conv_scr = kept(110), kept(100), kept(100), kept(100)
    rows, metrics = [], []
    for seed in range(5):
        flip = np.zeros(d, dtype=bool)
        flip[seed] = True
        for model, disp, scr in (("capsnet", caps_disp, caps_scr ^ flip),
                                 ("convnet-maxpool", conv_disp, conv_scr)):
            for test_set, correct in (("clean", np.ones(d, bool)), ("displaced", disp),
                                      ("scramble-g2", scr)):
                rows.append(pd.DataFrame({
                    "setup": "affnist", "model": model, "n": 100, "seed": seed,
                    "test_set": test_set, "source": np.arange(d), "transform": 0,
                    "value": np.nan, "label": 1, "pred": np.where(correct, 1, 2),
                    "correct": correct, "confidence": 0.9}))
                base = dict(setup="affnist", model=model, n=100, seed=seed, test_set=test_set,
                            factor_value=math.nan)
                metrics.append({**base, "metric": "accuracy", "value": correct.mean()})
                if test_set != "clean":
                    metrics.append({**base, "metric": "kept_given_intact_correct",
                                    "value": correct.mean()})
    run = root / "run"
    run.mkdir()
    pd.DataFrame(metrics).to_csv(run / "metrics.csv", index=False)
    pd.concat(rows, ignore_index=True).to_parquet(run / "predictions.parquet", index=False)
    (run / "manifest.json").write_text(json.dumps({"profile": {"name": "hand", "config": {
        "models": ["capsnet", "convnet-maxpool"], "targets": [0.5]}}}))
    f = np.asarray
    return run, (f(caps_disp, float) - f(caps_scr, float)) - (f(conv_disp, float)
                                                              - f(conv_scr, float))


def test_seed_only_excludes_zero_but_seeds_and_digits_do_not(tmp_path):
    run, per_digit = _constructed_store_run(tmp_path)
    build_report(run, with_figures=False)
    md = (run / "report.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| C3 "))
    cells = [c.strip() for c in row.strip("|").split("|")]
    both, verdict, seeds_only = cells[2], cells[5], cells[7]
    lo_s = float(seeds_only.split("[")[1].split(",")[0])
    lo_b, hi_b = (float(x) for x in both.split("[")[1].split("]")[0].split(","))
    assert lo_s > 0 and lo_b < 0 < hi_b and verdict == "inconclusive"
    # the digit term: about sd(per-digit difference) / sqrt(200), times t(0.975, 4)
    half = (hi_b - lo_b) / 2 / 100
    want = 2.7764451051977987 * per_digit.std() / math.sqrt(len(per_digit))
    assert half == pytest.approx(want, rel=0.15)
    assert "What this run cannot show" in md
