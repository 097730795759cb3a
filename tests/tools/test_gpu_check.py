"""``python -m bench gpu-check``: the quick CPU run, the guards, the estimate, the matmul rate."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import pytest
import torch

from bench.cli import main
from bench.config import load_profile
from bench.errors import BenchError
from bench.tools import gpu_check
from bench.tools.gpu_check import SECTIONS, CheckSettings, GpuCheck, _deadline, _OutOfTime, run_gpu_check


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """One ``--quick --device cpu`` run shared by the tests that read its output (~20 s)."""
    out = tmp_path_factory.mktemp("gpu-check")
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rc = main(["gpu-check", "--quick", "--device", "cpu", "--out", str(out)])
    finally:
        torch.set_num_threads(prev)
    return rc, out, json.loads((out / "gpu-check.json").read_text())


def test_quick_cpu_run_records_every_section(quick_run):
    rc, out, rep = quick_run
    assert rep["quick"] is True and rep["finished"] is True and rep["device"] == "cpu"
    assert set(rep["sections"]) == set(SECTIONS)
    for name, entry in rep["sections"].items():
        assert entry["status"] in ("ok", "skipped", "error"), name
        if entry["status"] == "skipped":
            assert entry["reason"].startswith("skipped: ")
        if entry["status"] == "error":
            assert isinstance(entry["error"], str) and entry["error"]
    for name in ("agreement_testsets", "agreement_models"):
        assert rep["sections"][name]["reason"].startswith("skipped: no CUDA")
    # Everything that needs no GPU really ran on the CPU.
    others = [n for n in SECTIONS if not n.startswith("agreement")]
    assert {n: rep["sections"][n]["status"] for n in others} == dict.fromkeys(others, "ok")
    assert rc == 0
    md = (out / "gpu-check.md").read_text()
    for name in SECTIONS:
        assert f"| {name} |" in md
    assert "## throughput_eager" in md and "| capsnet | 40 | 8 | eager | bf16 |" in md
    assert "## estimate of the `paper` profile" in md


def test_quick_rows_are_consistent(quick_run):
    _, _, rep = quick_run
    sec = rep["sections"]
    flops = {(r["model"], r["input_size"]): r for r in sec["flops"]["rows"]}
    bf16 = sec["matmul"]["bf16_tflops"] * 1e12
    rows = sec["throughput_eager"]["rows"]
    assert {(r["model"], r["precision"]) for r in rows} == {
        (m, p) for m in ("capsnet", "baseline-cnn", "convnet-maxpool", "convnet-k9")
        for p in ("bf16", "fp32")}
    for r in rows:
        assert r["train_images_per_s"] > 0 and r["infer_images_per_s"] > 0
        f = flops[(r["model"], 40)]["flops_train_per_image"]
        assert r["tflops_train"] == pytest.approx(f * r["train_images_per_s"] / 1e12)
        if r["precision"] == "bf16":
            assert r["frac_matmul_train"] == pytest.approx(f * r["train_images_per_s"] / bf16)
    assert all(r["mode"] == "compiled" for r in sec["throughput_compiled"]["rows"])
    learn = sec["learning"]["rows"]
    assert [r["model"] for r in learn] == ["capsnet", "baseline-cnn", "convnet-maxpool",
                                           "convnet-k9"]
    # an accuracy on the 64 validation images is a count of right answers over 64
    assert all(r["steps"] == 6 and r["val_size"] == 64 for r in learn)
    assert all(r["val_accuracy"] * 64 == pytest.approx(round(r["val_accuracy"] * 64)) for r in learn)
    est = sec["estimate"]
    parts = ("data_s", "train_s", "val_s", "eval_s", "attack_s", "overhead_s", "extra_s")
    assert est["total_s"] == pytest.approx(sum(est[k] for k in parts))
    paper = load_profile("paper")  # every setup's models x sizes x seeds, counted here by hand
    mt = paper.mnist_table
    assert est["cells"] == (len(paper.models) * len(paper.sizes) * len(paper.seeds)
                            + len(mt.models) * len(mt.sizes) * len(mt.seeds))
    assert sec["generation"]["images"] == 100 * 2 and sec["generation"]["images_per_s"] > 0


def test_a_row_is_measure_plus_the_fraction_of_the_matmul_rate(tmp_path, monkeypatch):
    check = GpuCheck(CheckSettings.quick_settings(torch.device("cpu")), torch.device("cpu"),
                     tmp_path, log=lambda _: None)
    check.rates["bf16"] = 4e12
    calls = []

    def fake_measure(name, size, batch, width, device, warmup, repeats, bf16, compile, **kw):
        calls.append((name, size, batch, bf16, compile, kw["train"], kw["infer"], kw["latency"]))
        return {"train_images_per_s": 100.0, "infer_images_per_s": None,
                "flops_per_image": 1e9, "flops_train_per_image": 2e9}

    monkeypatch.setattr(gpu_check, "measure", fake_measure)
    row = check._row("capsnet", 40, 8, True, infer=False)
    assert calls == [("capsnet", 40, 8, True, False, True, False, False)]
    assert row["tflops_train"] == pytest.approx(0.2)  # 2e9 FLOPs x 100 images/s
    assert row["frac_matmul_train"] == pytest.approx(0.05)  # 2e11 / 4e12
    assert "tflops_infer" not in row and row["precision"] == "bf16"
    skipped = check._row("capsnet", 40, 8, False, need_s=1e9)
    assert skipped["skipped"].startswith("time budget") and len(calls) == 1


def test_without_cuda_and_quick_it_is_a_one_line_error(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(BenchError, match="gpu-check needs CUDA; use --quick"):
        run_gpu_check(Path("unused"), quick=False, budget_s=None, device_name="auto")
    assert main(["gpu-check", "--device", "cpu", "--out", "unused"]) == 2
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and "needs CUDA" in err


def test_a_failing_section_is_recorded_and_the_next_runs(tmp_path):
    check = GpuCheck(CheckSettings.quick_settings(torch.device("cpu")), torch.device("cpu"),
                     tmp_path, log=lambda _: None)

    def broken():
        raise RuntimeError("torch.compile is broken here")

    assert check.section("a", broken)["status"] == "error"
    assert check.section("b", lambda: {"summary": "fine"})["status"] == "ok"
    rep = json.loads((tmp_path / "gpu-check.json").read_text())
    assert rep["sections"]["a"]["error"] == "RuntimeError: torch.compile is broken here"
    assert rep["sections"]["b"]["summary"] == "fine"
    skipped = check.section("c", lambda: {}, need_s=1e9)
    assert skipped["status"] == "skipped" and skipped["reason"].startswith("skipped: time budget")


def test_a_section_past_the_budget_is_interrupted(tmp_path):
    settings = dataclasses.replace(CheckSettings.quick_settings(torch.device("cpu")),
                                   budget_s=0.3, hard_grace_s=0.1)
    check = GpuCheck(settings, torch.device("cpu"), tmp_path, log=lambda _: None)
    entry = check.section("slow", lambda: time.sleep(5) or {})
    assert entry["status"] == "error" and "time budget reached" in entry["error"]
    assert entry["seconds"] < 2


def test_deadline_interrupts_a_long_call():
    start = time.perf_counter()
    with pytest.raises(_OutOfTime), _deadline(0.05):
        time.sleep(5)
    assert time.perf_counter() - start < 2


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cpu_and_cuda_agree(tmp_path):
    device = torch.device("cuda")
    check = GpuCheck(CheckSettings.quick_settings(device), device, tmp_path, log=lambda _: None)
    sets = check.agreement_testsets()
    assert sets["all_ok"], sets["rows"]
    warped = [r for r in sets["rows"] if "float_max_abs_diff" in r]
    assert warped and all(r["float_max_abs_diff"] <= 1e-5 for r in warped)
    assert all(r["params_equal"] and r["labels_equal"] for r in sets["rows"])
    models = check.agreement_models()
    assert models["all_ok"], models["rows"]
