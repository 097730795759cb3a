"""A pre-registered analysis (``[analysis]``): the primary claim alone at 5 %, the secondary ones
Holm-adjusted among themselves with a missing claim at p = 1, gated by the primary; p-values
worked with scipy's t distribution and Holm's rule by hand."""

from __future__ import annotations

import math

import pytest
from scipy import stats as st

from bench.config import load_profile
from bench.errors import BenchError
from bench.report.claims import Claim
from bench.report.scoreboard import _claims_table, _holm
from bench.stats import Interval

DF = 7  # 8 seeds


def _claim(key: str, t: float | None, secondary: bool = False) -> Claim:
    """A claim whose interval has t statistic ``t`` (se 0.01, 7 degrees of freedom); None: not
    measured."""
    c = Claim(key, key, "effect", "meaning", 0.0, "pp", secondary=secondary)
    if t is not None:
        q = st.t.ppf(0.975, DF)
        c.interval = Interval(0.01 * t, 0.01 * (t - q), 0.01 * (t + q), DF + 1, "t", se=0.01, df=DF)
    return c


def _p(t: float) -> float:
    return 2 * st.t.sf(abs(t), DF)


ANALYSIS = {"primary": "C1", "secondary": ["C3", "C4", "C6", "C8"]}


def test_secondary_family_is_the_plans_with_a_missing_claim_at_p_1():
    # p-values: C3 t=4, C4 t=3, C6 not measured (p = 1), C8 t=-3.5; primary t=5 (gate open)
    rows = [_claim("C1", 5.0), _claim("C2", 6.0), _claim("C3", 4.0), _claim("C4", 3.0),
            _claim("C6", None), _claim("C8", -3.5), _claim("S1", 9.0, secondary=True)]
    _holm(rows, ANALYSIS)
    by = {c.key: c for c in rows}
    assert by["C1"].p_adjusted == pytest.approx(_p(5.0)) and by["C1"].role == "primary"
    # Holm by hand over m = 4: sorted p(C3) < p(C8) < p(C4) < 1
    p3, p8, p4 = _p(4.0), _p(3.5), _p(3.0)
    assert by["C3"].p_adjusted == pytest.approx(4 * p3)
    assert by["C8"].p_adjusted == pytest.approx(max(4 * p3, 3 * p8))
    assert by["C4"].p_adjusted == pytest.approx(max(4 * p3, 3 * p8, 2 * p4))
    assert by["C2"].role == "exploratory" and by["C2"].holm_verdict == "— (exploratory)"
    assert by["S1"].holm_verdict == "— (secondary)" and by["C6"].holm_verdict == "not measured"
    # with t = 4 and 7 df: p = 0.0052, x4 = 0.021 -> supported; C4: 2 x p(3) = 0.040 -> supported
    assert by["C3"].holm_verdict == "supported" and by["C8"].holm_verdict == "contradicted"
    assert by["C4"].holm_verdict == ("supported" if max(4 * p3, 3 * p8, 2 * p4) <= 0.05
                                     else "inconclusive")
    notes = "\n".join(_claims_table(rows).notes)
    assert "Pre-registered analysis" in notes and "(C3, C4, C6, C8)" in notes


def test_the_gate_closes_when_the_primary_does_not_reject():
    rows = [_claim("C1", 1.0), _claim("C3", 8.0), _claim("C4", 8.0)]
    _holm(rows, {"primary": "C1", "secondary": ["C3", "C4"]})
    by = {c.key: c for c in rows}
    assert by["C1"].holm_verdict == "inconclusive"
    assert by["C3"].verdict == "supported"  # its own interval, unadjusted
    assert by["C3"].holm_verdict.startswith("not tested")


def test_without_analysis_the_family_is_the_measured_claims():
    rows = [_claim("C1", 5.0), _claim("C3", 4.0), _claim("C6", None)]
    _holm(rows, None)
    assert rows[0].p_adjusted == pytest.approx(min(1.0, max(2 * _p(5.0), 0)))
    assert rows[1].p_adjusted == pytest.approx(max(2 * _p(5.0), _p(4.0)))
    assert all(c.role == "" for c in rows) and math.isnan(rows[2].p_adjusted)


def test_an_undefined_digit_resampling_is_inconclusive_and_counts_p_1():
    c = _claim("C3", 10.0)
    c.digits_undefined = True
    assert c.verdict == "inconclusive" and "seeds only" in c.estimate_text()
    rows = [_claim("C1", 5.0), c, _claim("C4", 10.0)]
    _holm(rows, {"primary": "C1", "secondary": ["C3", "C4"]})
    assert c.p_adjusted == pytest.approx(1.0) and c.holm_verdict == "inconclusive"
    assert rows[2].p_adjusted == pytest.approx(2 * _p(10.0))


@pytest.mark.parametrize("table, match", [
    ('[analysis]\nprimary = "C1"\nsecondary = ["C3"]\n', "'analysis' needs the profile's plan"),
    ('plan = "x.md"\n[analysis]\nprimary = "first"\n', "must be scoreboard keys"),
    ('plan = "x.md"\n[analysis]\nprimary = "C1"\nsecondary = ["C3", "C1"]\n', "must not repeat"),
])
def test_analysis_errors_are_one_line(tmp_path, table, match):
    f = tmp_path / "p.toml"
    f.write_text('models = ["capsnet"]\nsizes = [100]\n' + table)
    with pytest.raises(BenchError, match=match) as e:
        load_profile(str(f))
    assert "\n" not in str(e.value)


def test_a_planned_profile_lists_its_untuned_models(tmp_path):
    f = tmp_path / "p.toml"
    f.write_text('models = ["capsnet", "convnet-k9"]\nsizes = [100]\nplan = "x.md"\n'
                 "[tune]\n[train.lr_by_model]\ncapsnet = 0.002\n")
    assert load_profile(str(f)).untuned() == ["convnet-k9"]
