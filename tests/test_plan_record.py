"""The pre-registered plan a run records (bench.runtime.plan_record) and the report's
"Pre-registration" lines, against a git repository made in the test (its commits are the oracle)."""

from __future__ import annotations

import subprocess

import pytest

from bench.errors import BenchError
from bench.report.sections import plan_section
from bench.runtime import code_commit, git_commit, plan_record


def _git(root, *args) -> str:
    return subprocess.run(["git", *args], cwd=root, check=True, capture_output=True,
                          text=True).stdout.strip()


def _init(root) -> None:
    _git(root, "init", "-q")
    _git(root, "config", "user.email", "t@example.org")
    _git(root, "config", "user.name", "t")


def _commit(root, message: str) -> str:
    """Commit everything in ``root``; the new commit's SHA."""
    _git(root, "add", ".")
    _git(root, "commit", "-qm", message)
    return _git(root, "rev-parse", "HEAD")


@pytest.fixture
def repo(tmp_path):
    _init(tmp_path)
    (tmp_path / "plan.md").write_text("primary: C1\n")
    (tmp_path / "p.toml").write_text("seeds = [0]\n")
    plan_commit = _commit(tmp_path, "plan")
    (tmp_path / "other.txt").write_text("later work\n")
    _commit(tmp_path, "later")
    return tmp_path, plan_commit


def test_the_plans_last_commit_not_the_head_and_nothing_changed_since(repo):
    root, plan_commit = repo
    rec = plan_record("plan.md", root / "p.toml", root=root)
    assert rec["commit"] == plan_commit != _git(root, "rev-parse", "HEAD")
    assert rec["plan_changed_since"] is False and rec["profile_changed_since"] is False
    import hashlib
    assert rec["sha256"] == hashlib.sha256(b"primary: C1\n").hexdigest()


def test_a_profile_edited_after_the_plan_is_reported_committed_or_not(repo):
    root, plan_commit = repo
    (root / "p.toml").write_text("seeds = [0, 1]\n")
    assert plan_record("plan.md", root / "p.toml", root=root)["profile_changed_since"] is True
    _git(root, "commit", "-qam", "profile changed")
    rec = plan_record("plan.md", root / "p.toml", root=root)
    assert rec["commit"] == plan_commit and rec["profile_changed_since"] is True


def test_a_missing_plan_is_a_one_line_error(repo):
    root, _ = repo
    with pytest.raises(BenchError, match="no-plan.md: no such file") as e:
        plan_record("no-plan.md", None, root=root)
    assert "\n" not in str(e.value)


def test_the_report_quotes_the_plan_and_its_deviations():
    manifest = {"git_commit": "bbbb", "plan": {"path": "docs/plans/x.md", "commit": "aaaa",
                                               "date": "2026-12-07T20:00:00+00:00",
                                               "sha256": "0" * 64, "plan_changed_since": False,
                                               "profile_changed_since": True}}
    text = "\n".join(plan_section(manifest, None))
    assert "`docs/plans/x.md`, last changed in commit `aaaa`" in text
    assert "commit `bbbb`" in text and "the plan no, the profile yes" in text
    assert "None recorded" in text
    assert "- seeds 0-7 only" in "\n".join(plan_section(manifest, "- seeds 0-7 only\n"))
    assert plan_section({"git_commit": "bbbb"}, "ignored") == []


def test_generated_results_do_not_make_a_checkout_dirty_and_code_does(tmp_path):
    root = tmp_path
    _init(root)
    (root / "bench").mkdir()
    (root / "results").mkdir()
    (root / "bench" / "a.py").write_text("x = 1\n")
    (root / "results" / "m.csv").write_text("v\n1\n")
    code = _commit(root, "code")
    (root / "README.md").write_text("docs\n")
    head = _commit(root, "docs only")
    # a run overwrites a committed result: HEAD stays clean; the code's commit is the first one
    (root / "results" / "m.csv").write_text("v\n2\n")
    assert git_commit(root) == head
    assert code_commit(root) == code
    # a code change makes both dirty
    (root / "bench" / "a.py").write_text("x = 2\n")
    assert git_commit(root) == head + "+dirty"
    assert code_commit(root) == code + "+dirty"
