"""``bench.runner.estimate``: a profile's wall time from measured rates, against totals worked by hand."""

from __future__ import annotations

import dataclasses

import pytest

from bench.cell.plan import Cell
from bench.config import DataConfig, MnistTableConfig, Profile, ThroughputConfig, TrainConfig
from bench.errors import BenchError
from bench.runner.estimate import (
    estimate_from_measurements,
    estimate_profile,
    format_duration,
    pick_rates,
    test_images,
    throughput_stage_s,
)

DATA = DataConfig(n_test=10, affnist_k=2, sweep_n=5, rotation_grid=(0, 10), scale_grid=(1.0,),
                  shear_grid=(0.0,), translate_grid=(0, 2), scramble_grids=(2,))
TRAIN = TrainConfig(batch_size=10, epochs=1.0, min_steps=20, max_steps=50, val_size=100,
                    eval_every=20)


def _tiny_profile() -> Profile:
    return Profile(name="tiny", models=("capsnet", "convnet-k9"), sizes=(100, 1000), seeds=(0,),
                   data=DATA, train=TRAIN)


def test_test_images_per_setup():
    # clean 10 + affnist 10 x 2 + sweeps 5 x (2 + 1 + 1 + 2) + scramble-g2 10 + displaced 10
    # + overlap 10 = 90
    assert test_images(_tiny_profile()) == {"affnist": 90}


def test_estimate_profile_matches_a_hand_computation():
    p = _tiny_profile()
    # step_budget: n=100 -> max(20, 100/10) = 20; n=1000 -> max(20, 100) capped at 50.
    # validations: ceil(20/20) + ceil(50/20) = 1 + 3 = 4, of 100 images each.
    # test images per cell: 90 (above); data = those 90 once.
    train = {("affnist", "capsnet"): 100.0, ("affnist", "convnet-k9"): 50.0}
    infer = {("affnist", "capsnet"): 200.0, ("affnist", "convnet-k9"): 100.0}
    est = estimate_profile(p, train, infer, gen_rate=40.0, cell_overhead_s=1.5, extra_s=0.5)
    # capsnet: (20 + 50) x 10 / 100 + 4 x 100 / 200 + 2 x 90 / 200 = 7 + 2 + 0.9
    # convnet-k9: (20 + 50) x 10 / 50 + 4 x 100 / 100 + 2 x 90 / 100 = 14 + 4 + 1.8
    # total: 9.9 + 19.8 + data 90 / 40 + overhead 4 x 1.5 + extra 0.5 = 38.45
    assert est["cells"] == 4
    assert est["train_s"] == pytest.approx(7 + 14)
    assert est["val_s"] == pytest.approx(2 + 4)
    assert est["eval_s"] == pytest.approx(0.9 + 1.8)
    assert est["data_s"] == pytest.approx(2.25)
    assert est["total_s"] == pytest.approx(38.45)
    assert est["total_h"] == pytest.approx(38.45 / 3600)


def test_a_missing_rate_is_a_one_line_error():
    p = _tiny_profile()
    infer = {("affnist", "capsnet"): 1.0, ("affnist", "convnet-k9"): 1.0}
    with pytest.raises(BenchError, match="no measured rate for affnist/convnet-k9"):
        estimate_profile(p, {("affnist", "capsnet"): 1.0}, infer, gen_rate=1.0)


def _two_setup_profile() -> Profile:
    return Profile(name="two", models=("capsnet",), sizes=(100,), seeds=(0,), data=DATA,
                   train=TRAIN, throughput=ThroughputConfig(batch_sizes=(10,)),
                   mnist_table=MnistTableConfig(models=("capsnet", "baseline-cnn"), sizes=(100,),
                                                seeds=(0,)))


ROWS = [  # made-up measurements, as gpu-check records them
    {"model": "capsnet", "input_size": 40, "batch": 10, "precision": "bf16",
     "train_images_per_s": 50.0, "seconds": 3.0},
    {"model": "capsnet", "input_size": 40, "batch": 20, "precision": "fp32",
     "infer_images_per_s": 200.0, "seconds": 1.0},
    {"model": "capsnet", "input_size": 28, "batch": 10, "precision": "bf16",
     "train_images_per_s": 80.0, "seconds": 2.0},
    {"model": "capsnet", "input_size": 28, "batch": 20, "precision": "fp32",
     "infer_images_per_s": 400.0, "seconds": 1.0},
]
LEARN = [{"model": "capsnet", "train_images_per_s": 25.0, "wall_s": 10.0, "train_seconds": 6.0,
          "validations": 2, "val_size": 100}]


def test_pick_rates_prefers_the_trainer_and_scales_the_other_setup():
    rates = pick_rates(_two_setup_profile(), ROWS, {"capsnet": 25.0}, train_batch=10,
                       eval_batch=20, precision="bf16")
    assert rates.ratio == pytest.approx(0.5)  # trainer 25 / row 50
    assert rates.train == pytest.approx({("affnist", "capsnet"): 25.0,
                                         ("mnist28", "capsnet"): 80.0 * 0.5,
                                         ("mnist28", "baseline-cnn"): 25.0})  # capsnet's, 40x40
    assert rates.infer == pytest.approx({("affnist", "capsnet"): 200.0,
                                         ("mnist28", "capsnet"): 400.0,
                                         ("mnist28", "baseline-cnn"): 200.0})


def test_estimate_from_measurements_matches_a_hand_computation():
    est = estimate_from_measurements(_two_setup_profile(), ROWS, LEARN, gen_rate=45.0,
                                     train_batch=10, eval_batch=20, precision="bf16")
    # Every cell: n = 100 -> max(20, 100 / 10) = 20 steps of batch 10.
    # affnist/capsnet: train 200 / 25 = 8; one validation of 100 / 200 = 0.5; eval 90 / 200 = 0.45
    # mnist28/capsnet: train 200 / 40 = 5; no validation (val_size 0); eval 10 / 400 = 0.025
    # mnist28/baseline-cnn: train 200 / 25 = 8; eval 10 / 200 = 0.05
    # data: (90 + 10) / 45 = 2.2222
    # overhead per cell: wall 10 - (train 6 + 2 x 100 / 200) = 3, x 3 cells = 9
    # extra: the 40x40 bf16 rows at the throughput batch 10: 3
    # total: 21 + 0.5 + 0.525 + 100 / 45 + 9 + 3 = 36.247
    assert est["cell_overhead_s"] == pytest.approx(3.0)
    assert est["extra_s"] == pytest.approx(3.0)
    assert est["test_images"] == {"affnist": 90, "mnist28": 10}
    assert est["total_s"] == pytest.approx(21 + 0.5 + 0.525 + 100 / 45 + 9 + 3)
    assert est["train_rates"]["mnist28/capsnet"] == pytest.approx(40.0)


def test_only_the_work_left_is_counted():
    """Cells to train, cells to evaluate, sets to build and cells at once, worked by hand."""
    p = _tiny_profile()
    train = {("affnist", "capsnet"): 100.0}  # convnet-k9 trains nothing: no rate needed
    infer = {("affnist", "capsnet"): 200.0, ("affnist", "convnet-k9"): 100.0}
    est = estimate_profile(p, train, infer, gen_rate=40.0, cell_overhead_s=1.5, extra_s=0.5,
                           train_cells=[Cell("affnist", "capsnet", 1000, 0)],
                           eval_cells=[Cell("affnist", "capsnet", 1000, 0),
                                       Cell("affnist", "convnet-k9", 100, 0)],
                           build_sets={"affnist": ["clean", "affnist"]}, parallel=2)
    # capsnet n=1000: train 50 x 10 / 100 = 5, validation 3 x 100 / 200 = 1.5, eval 90 / 200 = 0.45
    # convnet-k9 n=100: evaluation only, 90 / 100 = 0.9; the other two cells: nothing.
    # Two cells at once halve the cells' parts; data: (10 + 10 x 2) / 40 = 0.75.
    assert est["cells"] == 2
    assert est["train_s"] == pytest.approx(5 / 2)
    assert est["val_s"] == pytest.approx(1.5 / 2)
    assert est["eval_s"] == pytest.approx((0.45 + 0.9) / 2)
    assert est["overhead_s"] == pytest.approx(2 * 1.5 / 2)
    assert est["data_s"] == pytest.approx(0.75) and est["build_images"] == 30
    assert est["total_s"] == pytest.approx(2.5 + 0.75 + 0.675 + 1.5 + 0.75 + 0.5)


def test_nothing_left_costs_nothing():
    est = estimate_profile(_tiny_profile(), {}, {}, gen_rate=0.0, train_cells=[], eval_cells=[],
                           build_sets={})
    assert est["cells"] == 0 and est["total_s"] == 0.0


def test_throughput_stage_by_hand():
    # Default [throughput]: batch 128, 3 warm-up + 10 timed calls of each kind per model.
    # capsnet: 13 x (128 / 100 + 128 / 200 + 1 / 200) = 25.025
    # convnet-k9: 13 x (128 / 50 + 128 / 100 + 1 / 100) = 50.05; generation 10 x 4 / 40 = 1
    train = {("affnist", "capsnet"): 100.0, ("affnist", "convnet-k9"): 50.0}
    infer = {("affnist", "capsnet"): 200.0, ("affnist", "convnet-k9"): 100.0}
    assert throughput_stage_s(_tiny_profile(), train, infer, 40.0) == pytest.approx(76.075)


@pytest.mark.parametrize(("seconds", "text"), [(45, "about 45 s"), (1140, "about 19 min"),
                                               (3 * 3600, "about 3.0 h")])
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


def test_the_estimate_counts_the_budget_checks_cells_at_factor_times_the_steps():
    """A [budget_check] of factor 2 on both models, seeds 0 and 1, the default size (the largest,
    1000): 4 more cells of 2 x 20 = 40 steps each, scored on clean, affNIST-style and
    overlapping digits only."""
    import dataclasses

    from bench.config import BudgetCheckConfig
    from bench.runner.todo import fresh_plan

    p = dataclasses.replace(_tiny_profile(), seeds=(0, 1),
                            train=dataclasses.replace(TRAIN, steps=20),
                            budget_check=BudgetCheckConfig(seeds=(0, 1)))
    rates = {"capsnet": (100.0, 200.0), "convnet-k9": (50.0, 100.0)}
    train = {(s, m): r[0] for m, r in rates.items() for s in ("affnist", "affnist-budget")}
    infer = {(s, m): r[1] for m, r in rates.items() for s in ("affnist", "affnist-budget")}
    est = estimate_profile(p, train, infer, gen_rate=40.0)
    # main: 2 models x 2 sizes x 2 seeds = 8 cells of 20 steps; check: 2 x 1 x 2 = 4 of 40 steps
    assert est["cells"] == 12
    by = {(g["setup"], g["model"]): g for g in est["by_model"]}
    assert by[("affnist", "capsnet")]["steps"] == 4 * 20
    assert by[("affnist-budget", "capsnet")]["steps"] == 2 * 40
    assert by[("affnist-budget", "convnet-k9")]["cells"] == 2
    # train: capsnet (80 + 80) x 10 / 100 = 16; convnet-k9 (80 + 80) x 10 / 50 = 32
    assert est["train_s"] == pytest.approx(16 + 32)
    # validations: main ceil(20/20) = 1 per cell, check ceil(40/20) = 2 per cell, 100 images:
    # capsnet (4 x 1 + 2 x 2) x 100 / 200 = 4; convnet-k9 the same at 100/s = 8
    assert est["val_s"] == pytest.approx(4 + 8)
    # the check scores clean (10) + affNIST-style (10 x 2) + overlapping (10) = 40 images; a
    # main cell 90 (the sets of test_images_per_setup's comment and overlapping digits, 10)
    assert est["test_images"] == {"affnist": 90, "affnist-budget": 40}
    # capsnet (4 x 90 + 2 x 40) / 200 = 2.2; convnet-k9 (4 x 90 + 2 x 40) / 100 = 4.4
    assert est["eval_s"] == pytest.approx(2.2 + 4.4)
    # the check's sets are the main setup's, generated once: 90 images at 40/s
    assert est["data_s"] == pytest.approx(90 / 40)
    plan = fresh_plan(p)
    assert plan.sets_build["affnist-budget"] == []
    assert "affnist" in plan.sets_build["affnist"] and "clean" in plan.sets_build["affnist"]


def test_the_attacks_are_counted_by_hand():
    """data.attack on the n = 1000 cells only: gradient passes per digit 2 budgets x (1 FGSM +
    5 PGD) = 12, + 5 vote-attack passes for the capsule model; Square 4 digits x 3 queries."""
    from bench.config import AttackConfig
    from bench.runner.estimate import ATTACK_PASS_COST

    attack = AttackConfig(n=10, budgets=(0.1, 0.3), stated_budget=0.1, pgd_steps=5,
                          square_n=4, square_queries=3, sizes=(1000,))
    p = dataclasses.replace(_tiny_profile(), data=dataclasses.replace(DATA, attack=attack))
    train = {("affnist", "capsnet"): 100.0, ("affnist", "convnet-k9"): 50.0}
    infer = {("affnist", "capsnet"): 200.0, ("affnist", "convnet-k9"): 100.0}
    est = estimate_profile(p, train, infer, gen_rate=40.0)
    capsnet = 10 * 17 * ATTACK_PASS_COST / 100 + 4 * 3 / 200
    k9 = 10 * 12 * ATTACK_PASS_COST / 50 + 4 * 3 / 100
    assert est["attack_s"] == pytest.approx(capsnet + k9)
    base = estimate_profile(_tiny_profile(), train, infer, gen_rate=40.0)
    assert est["total_s"] - base["total_s"] == pytest.approx(capsnet + k9)
