"""The ``[budget_check]`` table of a profile: defaults, and a one-line error naming the key."""

from __future__ import annotations

import pytest

from bench.config import BudgetCheckConfig, load_profile
from bench.errors import BenchError

BASE = """
models = ["capsnet", "convnet-maxpool"]
sizes = [100, 300]
seeds = [0, 1, 2]
[train]
steps = 800
"""


def _load(tmp_path, table: str, base: str = BASE):
    f = tmp_path / "p.toml"
    f.write_text(base + "[budget_check]\n" + table)
    return load_profile(str(f))


def test_absent_table_is_no_check(tmp_path):
    f = tmp_path / "p.toml"
    f.write_text(BASE)
    assert load_profile(str(f)).budget_check is None


def test_defaults_and_lists_are_read(tmp_path):
    p = _load(tmp_path, "seeds = [0, 2]\n")
    assert p.budget_check == BudgetCheckConfig(factor=2.0, seeds=(0, 2), sizes=(), models=())
    p = _load(tmp_path, "factor = 3\nseeds = [1, 2]\nsizes = [100]\nmodels = [\"capsnet\"]\n")
    assert p.budget_check == BudgetCheckConfig(3.0, (1, 2), (100,), ("capsnet",))
    assert p.to_dict()["budget_check"]["factor"] == 3.0


@pytest.mark.parametrize("table, base, key", [
    ("", BASE, "'budget_check.seeds' must list at least 2"),
    ("seeds = [1]\n", BASE, "'budget_check.seeds' must list at least 2"),
    ("seeds = [1, 1]\n", BASE, "'budget_check.seeds' must list at least 2"),
    ("seeds = [0, 7]\n", BASE, "'budget_check.seeds' must be among the profile's seeds"),
    ("seeds = [0, 1]\nsizes = [1000]\n", BASE, "'budget_check.sizes' must be among"),
    ("seeds = [0, 1]\nmodels = [\"convnet-k9\"]\n", BASE, "'budget_check.models' must be among"),
    ("seeds = [0, 1]\nfactor = 1.0\n", BASE, "'budget_check.factor' must be > 1"),
    ("seeds = [0, 1]\nfactor = \"2\"\n", BASE, "'budget_check.factor' must be a number"),
    ("seeds = [0, 1]\nsteps = 2\n", BASE, "unknown key 'budget_check.steps'"),
    ("seeds = [0, 1]\n", BASE.replace("steps = 800", "max_steps = 800"),
     "'budget_check' needs train.steps > 0"),
    ("seeds = [0, 1]\nfactor = 1.2\n", BASE.replace("steps = 800", "steps = 2"),
     "'budget_check.factor' x train.steps 2 must round to more steps"),
    ("seeds = [0, 1]\n", BASE + "[data]\ncanvas = 28\ntrain_shift = 2\n",
     "'budget_check' needs data.canvas >= 40"),
])
def test_a_bad_value_is_a_one_line_error_naming_the_key(tmp_path, table, base, key):
    with pytest.raises(BenchError) as e:
        _load(tmp_path, table, base)
    assert key in str(e.value) and "\n" not in str(e.value)
    assert str(e.value).startswith("profile p.toml: ")
