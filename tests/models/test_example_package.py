"""The worked example, examples/capsbench-example-model, as a user runs it: installed (its
entry point), checked, and run beside the suite's models into a report."""

from __future__ import annotations

import importlib.metadata
import json
import tomllib
from pathlib import Path

import pytest
import torch

from bench.cli import main
from bench.config import load_profile
from bench.report.build import build_report
from bench.runner import stages as runner
from tests.tiny_profile import TINY

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "capsbench-example-model"
NAME = "capsnet-exp-squash"


@pytest.fixture
def installed(external, monkeypatch):
    """The example package as ``pip install -e examples/capsbench-example-model`` leaves it: the
    real install when there is one (CI), else its folder on sys.path with a dist-info made from
    its own pyproject.toml's name, version and entry points."""
    try:
        importlib.metadata.distribution("capsbench-example-model")
        return "installed"
    except importlib.metadata.PackageNotFoundError:
        pass
    project = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())["project"]
    monkeypatch.syspath_prepend(str(EXAMPLE))
    external.install(project["name"], project["version"],
                     project["entry-points"]["capsbench.models"])
    return "on sys.path"


def test_the_example_profile_names_the_example_model(installed):
    profile = load_profile(str(EXAMPLE / f"{NAME}.toml"))
    assert NAME in profile.models and "capsnet" in profile.models
    assert "convnet-maxpool" in profile.models


def test_check_and_a_tiny_run_with_the_example_model(installed, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path / "cache"))
    tiny = tmp_path / "tiny.toml"
    tiny.write_text(TINY.replace('models = ["capsnet", "convnet-maxpool"]',
                                 f'models = ["capsnet", "convnet-maxpool", "{NAME}"]'))
    assert main(["models", "--check", NAME, "--profile", str(tiny)]) == 0
    out = capsys.readouterr().out
    assert "capsule; capsbench-example-model 0.1.0" in out and "FAIL" not in out

    # The run (its own check is the one above: tests/cell/test_conformance.py tests the refusal)
    monkeypatch.setattr(runner, "conformance", lambda *args, **kwargs: None)
    run_dir = tmp_path / "run"
    runner.run(load_profile(str(tiny)), ("data", "train", "eval"), run_dir,
               torch.device("cpu"), progress=False)
    build_report(run_dir, with_figures=False)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    record = manifest["models"][NAME]
    assert (record["family"], record["package"], record["version"]) == (
        "capsule", "capsbench-example-model", "0.1.0")
    assert record["external"] and not manifest["models"]["capsnet"]["external"]
    report = (run_dir / "report.md").read_text()
    assert f"external model `{NAME}` (capsule): package capsbench-example-model 0.1.0" in report
    assert f"| C1/{NAME} viewpoint |" in report  # the claims read again with it
    # its rows in the tables, beside the suite's two
    table = report.split("## Accuracy and calibration at the largest n", 1)[1].split("\n## ", 1)[0]
    assert all(f"| {m} " in table for m in ("capsnet", "convnet-maxpool", NAME))


def test_the_example_routing_is_procedure_1_with_its_squash(installed):
    """Against a literal loop over samples, parents and children (Sabour et al. 2017, Procedure 1)
    with Efficient-CapsNet's squash written out: v = (1 - exp(-|s|)) s / |s|."""
    from capsbench_example.model import routing_by_agreement

    torch.manual_seed(0)
    u = torch.randn(2, 10, 5, 4, dtype=torch.float64)
    v, c = routing_by_agreement(u, 3)
    logits = torch.zeros(2, 10, 5, dtype=torch.float64)
    for r in range(3):
        coupling = torch.softmax(logits, dim=1)
        out = torch.zeros(2, 10, 4, dtype=torch.float64)
        for n in range(2):
            for j in range(10):
                s = sum(coupling[n, j, i] * u[n, j, i] for i in range(5))
                norm = float(s.norm())
                out[n, j] = (1 - torch.exp(torch.tensor(-norm, dtype=torch.float64))) * s / norm
        if r < 2:
            for n in range(2):
                for j in range(10):
                    for i in range(5):
                        logits[n, j, i] += float(u[n, j, i] @ out[n, j])
    assert torch.allclose(v, out, atol=1e-6)
    assert torch.allclose(c, coupling)
