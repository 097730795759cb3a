"""The scoreboard's rows for models from other packages: a claim read again with the external
model in the place of the suite's model of its family."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from bench.report.build import build_report
from bench.report.read import read_metrics
from bench.report.scoreboard import claims
from tests.fixtures_results import TARGETS, write_run

# An external model whose results are a suite model's, renamed: each of its rows must read
# exactly as the claim it repeats, whatever that claim's value (the name alone differs).
TWINS = {"ext-caps": ("capsnet", "capsule"), "ext-conv": ("convnet-k9", "convnet"),
         "ext-head": ("capsnet", "head")}


def _run_with_twins(tmp_path):
    run = write_run(tmp_path)
    metrics = pd.read_csv(run / "metrics.csv")
    twins = [metrics[metrics["model"] == src].assign(model=name)
             for name, (src, _) in TWINS.items()]
    pd.concat([metrics, *twins]).to_csv(run / "metrics.csv", index=False)
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["models"] = {name: {"family": fam, "external": True, "package": "twin-models",
                                 "version": "1.0", "module": "twins.net", "entry_point": None,
                                 "source_hash": "abc"} for name, (_, fam) in TWINS.items()}
    manifest["models"]["capsnet"] = {"family": "capsule", "external": False,
                                     "package": "capsbench", "version": "0.1.0"}
    (run / "manifest.json").write_text(json.dumps(manifest))
    return run, manifest


def _iv(claim):
    iv = claim.interval
    return None if iv is None else (iv.estimate, iv.low, iv.high, iv.n)


def test_an_external_model_repeats_the_claims_of_its_family(tmp_path):
    run, manifest = _run_with_twins(tmp_path)
    board = {c.key: c for c in claims(read_metrics(run), TARGETS, manifest=manifest)}
    for k in ("C1", "C2", "C3"):
        assert _iv(board[f"{k}/ext-caps"]) == _iv(board[k]) and _iv(board[k]) is not None
    # a ConvNet takes Gu et al.'s ConvNet's place in the counter-claim, model - capsnet: with
    # convnet-k9's results that is C4 (capsnet - convnet-k9) with its sign turned
    c4, c6 = _iv(board["C4"]), _iv(board["C6/ext-conv"])
    assert c4 is not None and c6 is not None
    assert c6[:3] == pytest.approx((-c4[0], -c4[2], -c4[1])) and c6[3] == c4[3]
    # a head has no claim of its own; a ConvNet repeats only the counter-claim
    assert not [k for k in board if k.endswith("/ext-head")]
    assert sorted(k for k in board if k.endswith("/ext-conv")) == ["C6/ext-conv"]
    # without the manifest's record nothing marks a model as external: no rows
    assert not [k for k in claims(read_metrics(run), TARGETS) if "/" in k.key]


def test_the_report_names_them_and_their_package(tmp_path):
    run, _ = _run_with_twins(tmp_path)
    build_report(run, with_figures=False)
    md = (run / "report.md").read_text()
    board = md.split("## Claims scoreboard", 1)[1].split("\n## ", 1)[0]
    assert "| C1/ext-caps viewpoint |" in board and "| C6/ext-conv counter-claim |" in board
    assert "in the place of the suite's model of its family" in board
    assert ("- external model `ext-caps` (capsule): package twin-models 1.0, module `twins.net` "
            "via `ext-caps`, source hash `abc`") in md
