"""Profiles: packaged ones load, user files and overrides are checked key by key."""

import pytest

from bench.config import Profile, TrainConfig, load_profile, profile_names
from bench.errors import BenchError

PACKAGED = ["smoke", "quick", "paper", "routing", "efficient", "efficient-paper", "ablation"]


@pytest.mark.parametrize("name", PACKAGED)
def test_packaged_profiles_load(name):
    p = load_profile(name)
    assert isinstance(p, Profile) and p.name == name
    assert isinstance(p.sizes, tuple) and all(isinstance(n, int) for n in p.sizes)


def test_profile_names_lists_packaged():
    assert set(PACKAGED) <= set(profile_names())


# Profiles whose budget grows with n on purpose (docs/protocol.md says why and what it gives up).
GROWING_BUDGET = {"ablation"}


@pytest.mark.parametrize("name", PACKAGED)
def test_every_profile_trains_every_n_equally_long(name):
    """Training length must not be confounded with training-set size: one budget per setup;
    where a profile lets it grow with n, still one budget per (setup, n) for every model, so the
    models are compared at equal training length."""
    from bench.cell.plan import cells, spec_for
    from bench.cell.train import step_budget

    p = load_profile(name)
    budgets: dict[object, set[int]] = {}
    for c in cells(p):
        key = (c.setup, c.n) if name in GROWING_BUDGET else c.setup
        budgets.setdefault(key, set()).add(step_budget(spec_for(p, c).train, c.n))
    assert all(len(b) == 1 for b in budgets.values()), budgets


def test_paper_reproduces_mnist_table():
    p = load_profile("paper")
    assert p.mnist_table is not None and p.mnist_table.canvas == 28
    assert p.mnist_table.train_shift == 2 and 60_000 in p.mnist_table.sizes
    assert len(p.seeds) >= 3 and p.model.width == 1.0


def test_unknown_profile_lists_known():
    with pytest.raises(BenchError, match="unknown profile 'nope'.*smoke"):
        load_profile("nope")


def test_user_file_unknown_key_is_named(tmp_path):
    f = tmp_path / "mine.toml"
    f.write_text('models = ["capsnet"]\n[train]\nlrr = 0.1\n')
    with pytest.raises(BenchError, match=r"unknown key 'train.lrr'"):
        load_profile(str(f))


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ('sizes = ["a"]', r"'sizes\[0\]' must be an integer"),
        ("[train]\nlr = -1.0", "must be positive"),
        ('models = ["resnet"]', "unknown model 'resnet'"),
        ("[data]\ndataset = 'cifar'", "'data.dataset'"),
        ("[train]\ndeterministic = 1", "'train.deterministic' must be true or false"),
        ("sizes = [59000]", "exceeds"),
        ("this is not toml", "invalid TOML"),
    ],
)
def test_bad_values_are_one_line_errors(tmp_path, text, pattern):
    f = tmp_path / "bad.toml"
    f.write_text(text + "\n")
    with pytest.raises(BenchError, match=pattern) as e:
        load_profile(str(f))
    assert "\n" not in str(e.value)


def test_overrides_are_typed():
    p = load_profile("smoke", ["train.lr=0.01", "seeds=[3, 4]", "data.dataset=kmnist"])
    assert p.train.lr == 0.01 and p.seeds == (3, 4) and p.data.dataset == "kmnist"
    with pytest.raises(BenchError, match="unknown key 'train.nope'"):
        load_profile("smoke", ["train.nope=1"])
    with pytest.raises(BenchError, match="key=value"):
        load_profile("smoke", ["train.lr"])


def test_missing_file(tmp_path):
    with pytest.raises(BenchError, match="not found"):
        load_profile(str(tmp_path / "x.toml"))


def test_step_budget():
    t = TrainConfig(batch_size=100, epochs=10, min_steps=50, max_steps=500)
    from bench.cell.train import step_budget

    assert step_budget(t, 100) == 50  # min_steps dominates
    assert step_budget(t, 1000) == 100  # 10 epochs of 1000 images in batches of 100
    assert step_budget(t, 60000) == 500  # capped
    # the report's copy of the rule (TrainConfig.budget), on the same hand-worked numbers
    assert (t.budget(100), t.budget(1000), t.budget(60000)) == (50, 100, 500)
