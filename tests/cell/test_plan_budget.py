"""The budget-stability check's cells (``[budget_check]``, :data:`bench.cell.plan.BUDGET_SETUP`):
absent, nothing changes; present, its cells pair with the main cells and train longer."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from bench.cell.plan import (
    AFFNIST_SETUP,
    BUDGET_SETUP,
    Cell,
    cell_dir,
    cells,
    planned_cells,
    spec_for,
)
from bench.cell.train import _seed, training_subset
from bench.config import BudgetCheckConfig, Profile, TrainConfig, load_profile, profile_names


@pytest.mark.parametrize("name", profile_names())
def test_a_packaged_profile_without_the_table_has_no_check_cells(name):
    """Without the table a profile plans no cell of the check's setup, and its recorded
    configuration has no such key (so the manifests of earlier runs still match)."""
    profile = load_profile(name)
    if profile.budget_check is not None:
        pytest.skip(f"{name} has a [budget_check] table")
    assert "budget_check" not in profile.to_dict()
    assert all(pc.cell.setup != BUDGET_SETUP for pc in planned_cells(profile, Path("run"), "cpu"))


def _with_check(**kw) -> Profile:
    base = Profile(name="t", models=("capsnet", "convnet-maxpool", "convnet-k9"),
                   sizes=(100, 300, 1000), seeds=(0, 1, 2),
                   train=TrainConfig(steps=800, val_size=500, select="last"))
    return dataclasses.replace(base, budget_check=BudgetCheckConfig(**kw))


def test_the_table_adds_its_cells_and_leaves_the_main_cells_and_folders_as_they_were(tmp_path):
    checked = _with_check(seeds=(0, 2), models=("capsnet", "convnet-k9"))
    plain = dataclasses.replace(checked, budget_check=None)
    before = planned_cells(plain, tmp_path, "cpu")
    after = planned_cells(checked, tmp_path, "cpu")
    assert after[:len(before)] == before  # same cells, specs and folders, in the same order
    extra = [pc.cell for pc in after[len(before):]]
    # default sizes: the largest, 1000; 2 models x 1 size x 2 seeds
    assert extra == [Cell(BUDGET_SETUP, "capsnet", 1000, 0), Cell(BUDGET_SETUP, "capsnet", 1000, 2),
                     Cell(BUDGET_SETUP, "convnet-k9", 1000, 0),
                     Cell(BUDGET_SETUP, "convnet-k9", 1000, 2)]
    assert len(cells(checked)) == 27 + 4


def test_a_check_cell_pairs_with_its_main_cell_and_trains_factor_times_the_steps(tmp_path):
    profile = _with_check(seeds=(0, 1), sizes=(300,), factor=2.5)
    main, check = Cell(AFFNIST_SETUP, "capsnet", 300, 1), Cell(BUDGET_SETUP, "capsnet", 300, 1)
    a, b = spec_for(profile, main), spec_for(profile, check)
    assert b.train.steps == 2000  # 800 x 2.5
    # everything else the trainer reads is the main cell's, its setup name (the seeds') included
    assert dataclasses.replace(b, train=dataclasses.replace(b.train, steps=800)) == a
    assert b.setup == AFFNIST_SETUP
    labels = torch.arange(60_000) % 10
    ia, va = training_subset(labels, a.n, a.seed, a.train.val_size)
    ib, vb = training_subset(labels, b.n, b.seed, b.train.val_size)
    assert torch.equal(ia, ib) and torch.equal(va, vb)
    for kind in ("init", "batches", "dropout"):
        assert _seed(kind, a) == _seed(kind, b)
    # a different seed is not paired: the order of batches differs
    other = spec_for(profile, Cell(BUDGET_SETUP, "capsnet", 300, 0))
    assert _seed("batches", other) != _seed("batches", b)
    fa, fb = cell_dir(tmp_path, profile, main, "cpu"), cell_dir(tmp_path, profile, check, "cpu")
    assert fa != fb and fa.name.split("-")[-1] != fb.name.split("-")[-1]  # another key
    assert fb.parent.parent.name == BUDGET_SETUP


def test_the_check_scores_clean_affnist_style_and_overlap_without_attacks():
    from bench.cell.plan import data_config, setup_by_name
    from bench.config import AttackConfig, DataConfig

    profile = dataclasses.replace(_with_check(seeds=(0, 1)),
                                  data=DataConfig(attack=AttackConfig(n=100)))
    setup = setup_by_name(profile, BUDGET_SETUP)
    assert setup.test_sets == ("clean", "affnist", "overlap")
    assert data_config(profile, setup).attack.n == 0
    assert data_config(profile, setup_by_name(profile, AFFNIST_SETUP)).attack.n == 100
