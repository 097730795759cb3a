"""The learning-rate search (``python -m bench tune``) and the per-model rates it feeds
(``[train.lr_by_model]``): choice rule by hand, the TOML round trip, cell keys, config errors, and a
tiny end-to-end search."""

from __future__ import annotations

import dataclasses
import tomllib

import pandas as pd
import pytest

from bench.cell.plan import AFFNIST_SETUP, Cell, cell_dir, spec_for
from bench.config import load_profile
from bench.errors import BenchError
from bench.tools.tune import choose, lr_table, run_tune, tuning_profile, tuning_settings
from tests.tiny_profile import TINY

BASE = """
models = ["capsnet", "convnet-maxpool", "convnet-k9"]
sizes = [100, 300]
seeds = [0, 1]
[train]
steps = 800
val_size = 500
"""


def _load(tmp_path, text: str):
    f = tmp_path / "p.toml"
    f.write_text(text)
    return load_profile(str(f))


def test_choice_is_the_best_mean_over_seeds_and_ties_go_to_the_smaller_rate():
    rows = pd.DataFrame([
        # capsnet: 1e-3 has the best single cell (0.95) but 3e-4 the best mean (0.92 vs 0.90)
        ("capsnet", 3e-4, 0, 0.93), ("capsnet", 3e-4, 1, 0.91),
        ("capsnet", 1e-3, 0, 0.95), ("capsnet", 1e-3, 1, 0.85),
        ("capsnet", 3e-3, 0, 0.10), ("capsnet", 3e-3, 1, 0.12),
        # convnet-k9: 1e-3 and 3e-3 tie at 0.90: the smaller is chosen
        ("convnet-k9", 3e-4, 0, 0.80), ("convnet-k9", 3e-4, 1, 0.82),
        ("convnet-k9", 1e-3, 0, 0.90), ("convnet-k9", 1e-3, 1, 0.90),
        ("convnet-k9", 3e-3, 0, 0.89), ("convnet-k9", 3e-3, 1, 0.91),
    ], columns=["model", "lr", "seed", "final_val_accuracy"])
    assert choose(rows) == {"capsnet": 3e-4, "convnet-k9": 1e-3}


def test_chosen_table_loads_back_as_the_profiles_rates(tmp_path):
    text = lr_table({"convnet-k9": 0.003, "capsnet": 0.0003}, ("capsnet", "convnet-maxpool",
                                                               "convnet-k9"))
    assert text.splitlines()[0] == "[train.lr_by_model]"
    assert tomllib.loads(text) == {"train": {"lr_by_model": {"capsnet": 0.0003, "convnet-k9": 0.003}}}
    p = _load(tmp_path, BASE + text)
    assert p.train.lr_for("capsnet") == 0.0003
    assert p.train.lr_for("convnet-k9") == 0.003
    assert p.train.lr_for("convnet-maxpool") == 1e-3  # not named: train.lr


def test_a_models_rate_changes_its_cells_only(tmp_path):
    plain = _load(tmp_path, BASE)
    tuned = _load(tmp_path, BASE + "[train.lr_by_model]\ncapsnet = 0.0003\n")
    by_lr = _load(tmp_path, BASE.replace("steps = 800", "steps = 800\nlr = 0.0003"))
    caps, k9 = Cell(AFFNIST_SETUP, "capsnet", 100, 0), Cell(AFFNIST_SETUP, "convnet-k9", 100, 0)
    # the named model trains exactly as with train.lr set to its rate, and the others as before
    assert spec_for(tuned, caps) == spec_for(by_lr, caps)
    assert cell_dir(tmp_path, tuned, caps, "cpu") == cell_dir(tmp_path, by_lr, caps, "cpu")
    assert cell_dir(tmp_path, tuned, k9, "cpu") == cell_dir(tmp_path, plain, k9, "cpu")
    assert cell_dir(tmp_path, tuned, caps, "cpu") != cell_dir(tmp_path, plain, caps, "cpu")
    assert "lr_by_model" not in spec_for(plain, k9).to_dict()["train"]
    assert "lr_by_model" not in plain.to_dict()["train"] and "tune" not in plain.to_dict()


@pytest.mark.parametrize("extra, key", [
    ("[train.lr_by_model]\nbaseline-cnn = 0.001\n", "'train.lr_by_model' names models not in"),
    ("[train.lr_by_model]\ncapsnet = 0.0\n", "'train.lr_by_model' rates must be positive"),
    ("[train.lr_by_model]\ncapsnet = \"fast\"\n", "'train.lr_by_model.capsnet' must be a number"),
    ("[tune]\nlrs = [0.001]\n", "'tune.lrs' must list at least 2 distinct"),
    ("[tune]\nmodels = [\"baseline-cnn\"]\n", "'tune.models' must be among"),
    ("[tune]\nseeds = []\n", "'tune.seeds' must list at least one seed"),
])
def test_bad_rates_and_search_settings_are_one_line_errors(tmp_path, extra, key):
    with pytest.raises(BenchError, match=key.replace("(", r"\(")) as e:
        _load(tmp_path, BASE + extra)
    assert "\n" not in str(e.value)


def test_search_settings_resolve_the_profiles_defaults(tmp_path):
    p = _load(tmp_path, BASE)
    t = tuning_settings(p)
    assert (t.steps, t.n, t.models, t.lrs, t.seeds) == (800, 300, p.models, (3e-4, 1e-3, 3e-3), (100,))
    v = tuning_profile(p, 3e-3)
    assert (v.sizes, v.seeds, v.train.lr, v.train.select, v.budget_check) == ((300,), (100,), 3e-3,
                                                                             "last", None)
    with pytest.raises(BenchError, match="train.val_size must be > 0"):
        tuning_settings(dataclasses.replace(p, train=dataclasses.replace(p.train, val_size=0)))


def test_search_budget_follows_the_epochs_rule_at_its_n(tmp_path):
    """Without a fixed budget (train.steps = 0) the search trains as long as the profile's cells
    of its n do: max(min_steps, ceil(epochs x n / batch)), by hand 12.8 x 300 / 32 = 120 -> 150."""
    p = _load(tmp_path, BASE)
    train = dataclasses.replace(p.train, steps=0, epochs=12.8, min_steps=150, batch_size=32)
    assert tuning_settings(dataclasses.replace(p, train=train)).steps == 150
    train = dataclasses.replace(train, epochs=40.0)  # 40 x 300 / 32 = 375
    assert tuning_settings(dataclasses.replace(p, train=train)).steps == 375


def test_tiny_search_end_to_end(tmp_path):
    p = _load(tmp_path, TINY + "[tune]\nlrs = [0.001, 0.01]\nsteps = 4\nmodels = [\"convnet-maxpool\"]\n")
    table, chosen = run_tune(p, tmp_path / "tune", "cpu", progress=False)
    assert list(table["lr"]) == [0.001, 0.01] and set(table["n"]) == {40}
    csv = pd.read_csv(tmp_path / "tune" / "tuning.csv")
    best = max(zip(csv["final_val_accuracy"], -csv["lr"], strict=True))  # best score, smaller rate
    assert chosen == {"convnet-maxpool": -best[1]}
    written = tomllib.loads((tmp_path / "tune" / "tuning.toml").read_text())
    assert written["train"]["lr_by_model"] == chosen
    # a second call reuses the finished cells: the same scores
    again, _ = run_tune(p, tmp_path / "tune", "cpu", progress=False)
    assert again["final_val_accuracy"].tolist() == table["final_val_accuracy"].tolist()
