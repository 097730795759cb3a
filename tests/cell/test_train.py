"""Training cells: nested balanced subsets, the learning-rate schedule, determinism, resume."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from bench.cell.evaluate import load_model
from bench.cell.plan import TrainSpec
from bench.cell.train import learning_rate, step_budget, train_cell, training_subset, weights_hash
from bench.cli import main
from bench.config import TrainConfig
from bench.data.mnist import load_split
from bench.errors import BenchError
from bench.io import read_json

TINY = TrainConfig(batch_size=16, epochs=1.0, min_steps=12, max_steps=12, val_size=64,
                   eval_every=4)
SPEC = TrainSpec("capsnet", n=40, seed=3, setup="mnist28", canvas=28, train_shift=2,
                 width=0.0625, train=TINY)


def _one_thread() -> int:
    """Tiny models run steadier on one thread of a shared machine; and bitwise repeatability on
    the CPU holds for a fixed thread count (reductions are split by thread)."""
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    return prev


@pytest.fixture(autouse=True)
def one_thread():
    prev = _one_thread()
    yield
    torch.set_num_threads(prev)


@pytest.fixture(scope="module")
def labels() -> torch.Tensor:
    return load_split("train")[1]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    """One uninterrupted run of SPEC, shared by the determinism and resume tests."""
    cell = tmp_path_factory.mktemp("reference") / "cell"
    prev = _one_thread()
    try:
        return train_cell(SPEC, cell, "cpu", progress=False) | {"cell": cell}
    finally:
        torch.set_num_threads(prev)


# ----------------------------------------------------------------------------- subsets


def test_subsets_are_nested_balanced_and_disjoint_from_validation(labels):
    subsets = {n: training_subset(labels, n, seed=0, val_size=1000) for n in (100, 300, 1000)}
    val = subsets[100][1]
    for n, (train, v) in subsets.items():
        assert train.numel() == n and train.unique().numel() == n
        assert torch.equal(v, val)  # the same validation set for every n of a seed
        assert torch.bincount(labels[train], minlength=10).tolist() == [n // 10] * 10
        assert not set(train.tolist()) & set(val.tolist())
    assert set(subsets[100][0].tolist()) <= set(subsets[300][0].tolist())
    assert set(subsets[300][0].tolist()) <= set(subsets[1000][0].tolist())
    assert val.numel() == 1000 and val.unique().numel() == 1000
    other = training_subset(labels, 100, seed=1, val_size=1000)
    assert not torch.equal(other[0], subsets[100][0]) and not torch.equal(other[1], val)


def test_subsets_stay_balanced_for_any_n_and_when_a_class_runs_out():
    labels = torch.arange(1000) % 10
    labels[labels == 9] = torch.tensor([9] * 5 + [8] * 95)  # class 9: only 5 images
    counts_before = None
    for n in range(1, 200, 7):
        train, _ = training_subset(labels, n, seed=0, val_size=0)
        counts = torch.bincount(labels[train], minlength=10)
        full = counts[:9]  # classes 0..7 have 100 images each, class 8 has 195
        assert full.max() - full.min() <= 1
        if counts_before is not None:
            assert (counts >= counts_before).all()  # nested: no class ever loses an image
        counts_before = counts
    assert counts[9] == 5  # class 9 exhausted, the others keep being filled round-robin


def test_subset_rejects_sizes_beyond_the_pool(labels):
    with pytest.raises(BenchError, match="n=59500"):
        training_subset(labels, 59_500, seed=0, val_size=1000)


def test_learning_rate_decays_smoothly_as_in_the_released_code():
    cfg = TrainConfig()
    assert learning_rate(0, cfg) == pytest.approx(1e-3)
    assert learning_rate(2000, cfg) == pytest.approx(0.96e-3)
    assert learning_rate(1000, cfg) == pytest.approx(1e-3 * math.sqrt(0.96))  # no staircase
    assert learning_rate(10**7, cfg) == pytest.approx(1e-6)  # the released code's floor


# ----------------------------------------------------------------------------- cells


def test_summary_and_files(reference):
    cell = reference["cell"]
    assert (cell / "train.json").exists() and (cell / "checkpoint.pt").exists()
    assert not (cell / "state.pt").exists()  # only needed to resume an unfinished cell
    summary = read_json(cell / "train.json")
    for key in ("spec", "steps", "best_step", "best_val_accuracy", "train_seconds",
                "images_per_s", "final_loss", "device", "params"):
        assert key in summary
    history = summary["history"]
    first_best = max(history, key=lambda h: (h["val_accuracy"], -h["step"]))["step"]
    assert summary["steps"] == 12 and summary["best_step"] == first_best
    assert summary["spec"] == SPEC.to_dict() and summary["train_size"] == 40
    # an accuracy on the validation images is a count of right answers over their number
    val = SPEC.train.val_size
    assert summary["best_val_accuracy"] * val == pytest.approx(round(summary["best_val_accuracy"] * val))
    assert math.isfinite(summary["final_loss"])
    assert [h["step"] for h in summary["history"]] == [4, 8, 12]
    best = max(h["val_accuracy"] for h in summary["history"])
    assert summary["best_val_accuracy"] == best
    model = load_model(cell, "cpu")
    assert not model.training and weights_hash(model) == summary["weights_hash"]


def test_finished_cell_is_returned_without_training(reference):
    steps = []
    again = train_cell(SPEC, reference["cell"], "cpu", progress=False, on_step=steps.append)
    assert steps == [] and again["weights_hash"] == reference["weights_hash"]


def test_two_runs_give_bitwise_identical_weights(reference, tmp_path):
    second = train_cell(SPEC, tmp_path / "cell", "cpu", progress=False)
    assert second["weights_hash"] == reference["weights_hash"]
    a = load_model(reference["cell"]).state_dict()
    b = load_model(tmp_path / "cell").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_killed_cell_resumes_to_the_same_weights(reference, tmp_path):
    cell = tmp_path / "cell"

    with pytest.raises(Killed):  # at step 6, after the state saved at step 4
        train_cell(SPEC, cell, "cpu", progress=False, on_step=_kill_at(6))
    assert not (cell / "train.json").exists() and (cell / "state.pt").exists()
    resumed_steps = []
    summary = train_cell(SPEC, cell, "cpu", progress=False, on_step=resumed_steps.append)
    assert resumed_steps[0] == 5 and summary["resumed_from"] == 4
    assert summary["weights_hash"] == reference["weights_hash"]
    assert summary["best_step"] == reference["best_step"]
    assert summary["history"] == reference["history"]


class Killed(Exception):
    pass


def _kill_at(k: int):
    def on_step(step: int) -> None:
        if step == k:
            raise Killed

    return on_step


def test_state_of_another_spec_is_refused(tmp_path):
    cell = tmp_path / "cell"
    with pytest.raises(Killed):
        train_cell(SPEC, cell, "cpu", progress=False, on_step=_kill_at(5))
    other = dataclasses.replace(SPEC, seed=4)
    with pytest.raises(BenchError, match="different spec"):
        train_cell(other, cell, "cpu", progress=False)


def test_without_validation_the_last_step_is_kept(tmp_path):
    spec = TrainSpec("convnet-k9", n=20, seed=0, canvas=28, train_shift=2, width=0.0625,
                     train=dataclasses.replace(TINY, val_size=0, min_steps=5, max_steps=5))
    summary = train_cell(spec, tmp_path / "cell", "cpu", progress=False)
    assert summary["best_val_accuracy"] is None and summary["best_step"] == 5
    final = torch.load(tmp_path / "cell" / "checkpoint.pt", weights_only=True)
    assert final["step"] == 5 and weights_hash(final["model"]) == summary["weights_hash"]


def test_cli_train(tmp_path, capsys):
    rc = main([
        "train", "--profile", "smoke", "--model", "convnet-k9", "--n", "20", "--seed", "1",
        "--device", "cpu", "--out", str(tmp_path),
        "--set", "model.width=0.0625", "--set", "train.steps=3",
        "--set", "train.eval_every=3", "--set", "train.val_size=30",
    ])
    assert rc == 0
    (cell,) = (tmp_path / "cells" / "affnist" / "convnet-k9").glob("n20-s1-*")  # the runner's folder
    summary = read_json(cell / "train.json")
    assert summary["steps"] == 3 and summary["spec"]["canvas"] == 40
    assert str(cell) in capsys.readouterr().out
    assert main(["train", "--model", "no-such-model", "--n", "20", "--out", str(tmp_path)]) == 2


def test_cosine_schedule_over_the_budget():
    cfg = TrainConfig(lr=1e-3, lr_schedule="cosine")
    assert learning_rate(0, cfg, 1000) == pytest.approx(1e-3)
    assert learning_rate(500, cfg, 1000) == pytest.approx(0.5e-3)  # (1 + cos(pi / 2)) / 2
    assert learning_rate(250, cfg, 1000) == pytest.approx(1e-3 * (1 + math.sqrt(0.5)) / 2)
    assert learning_rate(1000, cfg, 1000) == pytest.approx(1e-6)  # cos(pi) = -1: the floor
    with pytest.raises(BenchError, match="budget"):
        learning_rate(10, cfg)


def test_a_fixed_budget_is_the_same_for_every_n():
    cfg = TrainConfig(steps=700, batch_size=32, epochs=15, min_steps=100, max_steps=500)
    assert {step_budget(cfg, n) for n in (100, 300, 1000, 3000, 60000)} == {700}












def test_last_checkpoint_selection_uses_no_validation_labels(tmp_path):
    spec = dataclasses.replace(SPEC, train=dataclasses.replace(TINY, select="last"))
    summary = train_cell(spec, tmp_path / "cell", "cpu", progress=False)
    final = torch.load(tmp_path / "cell" / "checkpoint.pt", weights_only=True)
    assert final["step"] == summary["steps"] == summary["checkpoint_step"] == 12
    assert summary["labelled_images"] == SPEC.n  # validation only monitored
    assert summary["final_val_accuracy"] == summary["history"][-1]["val_accuracy"]
    assert summary["converged"] in (True, False) and summary["val_improvement_se"] is not None


def test_profile_reconstruction_weight_reaches_every_capsnet_with_a_decoder():
    from bench.cell.plan import Cell, spec_for
    from bench.cell.train import build_model
    from bench.config import load_profile

    profile = load_profile("smoke", ["model.recon_weight=0.01", "model.width=0.0625"])
    for name, expected in [("capsnet", 0.01), ("capsnet-r1-norecon", None), ("convnet-k9", None)]:
        spec = spec_for(profile, Cell("affnist", name, 100, 0))
        assert spec.recon_weight == 0.01
        assert getattr(build_model(spec), "recon_weight", None) in (expected, 0.0005)
        if expected is not None:
            assert build_model(spec).recon_weight == expected
    default = spec_for(load_profile("smoke", []), Cell("affnist", "capsnet", 100, 0))
    assert default.recon_weight is None and build_model(default).recon_weight == 0.0005
