"""A profile that names no clean-accuracy target (``targets = []``) has no C2 and no
data-efficiency table; one whose manifest records no targets at all gets the defaults, said so."""

from __future__ import annotations

import math

import pandas as pd

from bench.report.build import _targets
from bench.report.scoreboard import claims
from bench.report.sections import _data_efficiency_table, budget_grows_with_n


def _main() -> pd.DataFrame:
    rows = []
    for model, accs in (("capsnet", (0.80, 0.95)), ("convnet-maxpool", (0.78, 0.96))):
        for seed in (0, 1):
            for n, acc in zip((50, 3000), accs, strict=True):
                rows.append({"setup": "affnist", "model": model, "n": n, "seed": seed,
                             "test_set": "clean", "factor_value": math.nan,
                             "metric": "accuracy", "value": acc})
    return pd.DataFrame(rows)


def test_an_empty_target_list_is_kept_and_a_missing_one_is_the_default_said_so():
    notes: list[str] = []
    assert _targets({"profile": {"targets": []}}, notes) == [] and notes == []
    assert _targets({"profile": {"config": {"targets": [0.9]}}}, notes) == [0.9] and notes == []
    assert _targets({}, notes) == [0.9, 0.95, 0.98] and len(notes) == 1


def test_no_target_means_no_c2_and_no_data_efficiency_table():
    main = _main()
    c2 = next(c for c in claims(main, []) if c.key == "C2")
    assert c2.interval is None and "names no clean-accuracy target" in c2.reason
    assert _data_efficiency_table(main, ["capsnet", "convnet-maxpool"], []) is None
    # with a target both reach between the sizes on both seeds, C2 is measured
    c2 = next(c for c in claims(main, [0.9]) if c.key == "C2")
    assert c2.interval is not None


def test_a_ratio_is_not_printed_from_a_single_seed():
    # capsnet reaches 90 % between the sizes on both seeds; convnet-maxpool on seed 0 only
    rows = []
    for model, per_seed in (("capsnet", ((0.80, 0.95), (0.80, 0.95))),
                            ("convnet-maxpool", ((0.80, 0.95), (0.80, 0.85)))):
        for seed, accs in enumerate(per_seed):
            for n, acc in zip((50, 3000), accs, strict=True):
                rows.append({"setup": "affnist", "model": model, "n": n, "seed": seed,
                             "test_set": "clean", "factor_value": math.nan,
                             "metric": "accuracy", "value": acc})
    table = _data_efficiency_table(pd.DataFrame(rows), ["capsnet", "convnet-maxpool"], [0.9])
    assert table is not None
    row = next(r for r in table.rows if r[0] == "convnet-maxpool")
    assert row[-1] == "no ratio (one seed: 1 of 2 dropped, not reached)"


def test_a_budget_that_grows_with_n_is_said_under_the_data_efficiency_table():
    main = _main()
    fixed = _data_efficiency_table(main, ["capsnet", "convnet-maxpool"], [0.9])
    grows = _data_efficiency_table(main, ["capsnet", "convnet-maxpool"], [0.9], budget_grows=True)
    assert fixed.rows == grows.rows
    said = [n for n in grows.notes if n not in fixed.notes]
    assert len(said) == 1 and "mix training-set size with training length" in said[0]
    # without convnet-maxpool there is no C2, and no note about it
    alone = _data_efficiency_table(main, ["capsnet"], [0.9])
    assert not any("Claim C2" in n for n in alone.notes)
    assert any("Claim C2" in n for n in fixed.notes)


def test_budget_grows_with_n_reads_the_cells_steps():
    """By hand: 375 steps at n = 50 and 1,500 at n = 3,000 grow; 800 at both sizes do not."""
    grows = pd.DataFrame({"n": [50, 50, 3000, 3000], "steps": [375, 375, 1500, 1500]})
    same = pd.DataFrame({"n": [50, 3000], "steps": [800, 800]})
    assert budget_grows_with_n(grows) and not budget_grows_with_n(same)
    assert not budget_grows_with_n(None) and not budget_grows_with_n(pd.DataFrame())


def test_budget_words_from_the_profile_config():
    """By hand: a fixed budget is one number; the epochs rule gives each size's,
    max(min_steps, ceil(epochs x n / batch)) <= max_steps: 16 x 50 / 32 = 25 -> 500 and
    16 x 3,000 / 32 = 1,500; a config without the keys says nothing."""
    from bench.report.table import _budget

    rule = {"steps": 0, "epochs": 16.0, "min_steps": 500, "max_steps": 100_000, "batch_size": 32}
    assert _budget({"train": dict(rule, steps=800), "sizes": [50, 3000]}) == "800 steps"
    assert _budget({"train": rule, "sizes": [3000, 50]}) == "500 steps at n = 50, 1,500 at n = 3,000"
    assert _budget({"train": dict(rule, max_steps=1000), "sizes": [3000]}) == "1,000 steps at n = 3,000"
    assert _budget({"train": {"steps": 0}, "sizes": [50]}) == ""
