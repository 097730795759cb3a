"""``python -m bench gpu-check``: the prepared one-shot GPU check (agreement, speed, learning).

One command under a global time budget (our choice: 420 s by default) writes one JSON
(``<out>/gpu-check.json``) and one table (``<out>/gpu-check.md``, also printed). Sections, in the
order they run (most important first, the open-ended one last):

1. ``environment``: device, versions, the TF32 / cuDNN flags the timings ran under.
2. ``flops``: FLOPs per image of a forward pass and of a training step (:mod:`bench.flops`).
3. ``matmul``: the card's matrix-multiply rate (:func:`bench.cell.throughput.matmul_rate`) in bf16,
   fp32 (as torch is configured) and TF32; model rates are shown as a fraction of the rate of
   their own precision.
4. ``agreement_testsets``: the generated test sets on the CPU and on CUDA. The float warp before
   uint8 rounding (:func:`bench.data.affine.warp_float`) must agree to :data:`WARP_TOL` per pixel;
   the uint8 pixels that differ are counted (a float difference of 1e-6 can flip a value lying
   at .5). Integer-only sets (scrambled, displaced) must be equal.
5. ``agreement_models``: every model, same weights and input, CPU versus CUDA in float32 without
   TF32: the max absolute difference of the scores (within :data:`SCORE_TOL`), logits, features.
6. ``throughput_eager``: train and inference images/s, TFLOP/s and peak memory of every model
   (40x40) at batch 128 and 512, fp32 and bf16 autocast.
7. ``throughput_28``: the 28x28 rates of the paper's MNIST-table models, for the estimate.
8. ``generation``: affNIST-style generation images/s (:func:`bench.data.testsets.generate`).
9. ``learning``: one ``paper``-profile cell per model (n = 10,000, capped at 500 steps) trained by
   the real trainer; its validation accuracy must pass :data:`LEARN_THRESHOLD`.
10. ``estimate``: the ``paper`` profile's wall time from the measured rates (:mod:`bench.runner.estimate`).
11. ``throughput_compiled``: as 6 with ``torch.compile``; compiling is slow and open-ended, so
    it runs last and row by row only while the budget lasts.
12. ``target``: CapsNet bf16 training as a fraction of the bf16 matmul rate, against
    :data:`TARGET_FRACTION` (reported, not asserted).

Every model rate is measured by :func:`bench.cell.throughput.measure` (images/s = batch / median
seconds of a call), as in ``bench throughput`` and the runner. Every section is guarded: an
exception is recorded (with the tail of its traceback) and the next section runs; a section that
no longer fits the budget is recorded as ``skipped: ...``. The JSON and the table are rewritten
after every section, so a run killed half-way leaves its results. ``--quick`` runs a tiny version
of every section (small widths, batch 8, a few steps, tiny sets) to exercise it on the CPU.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import importlib.util
import signal
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bench.cell.plan import Cell, TrainSpec, spec_for
from bench.cell.throughput import matmul_rate, measure, timed
from bench.cell.train import build_model, step_budget, train_cell
from bench.config import load_profile
from bench.data import affine
from bench.data.canvas import place, to_float
from bench.data.mnist import load_split
from bench.data.testsets import default_set_names, generate, set_kind
from bench.errors import BenchError
from bench.flops import flops_per_image
from bench.io import write_json, write_text
from bench.runner.estimate import estimate_from_measurements
from bench.runtime import device_name, git_commit, resolve_device, versions

__all__ = ["LEARN_THRESHOLD", "SECTIONS", "CheckSettings", "GpuCheck", "render_markdown",
           "run_gpu_check"]

SECTIONS = ("environment", "flops", "matmul", "agreement_testsets", "agreement_models",
            "throughput_eager", "throughput_28", "generation", "learning", "estimate",
            "throughput_compiled", "target")
# Our choice: per pixel, in [0, 1] units (0.00255 grey levels), about 84 float32 epsilons
# (2^-23 = 1.19e-7); the CPU and CUDA kernels of the warp (kornia's warp_affine, on torch's
# grid_sample) may round differently.
WARP_TOL = 1e-5
SCORE_TOL = 1e-4  # our choice: scores lie in [0, 1]; float32 sums in another order differ ~1e-6
# Our choice: validation accuracy a paper cell must reach after 500 steps (64,000 shifted digits
# drawn from 10,000). A model broken on the GPU (NaN under bf16, wrong masking, a stale kernel)
# stays near chance, 0.1; 0.9 leaves room for the gap between shifted training digits and
# centred validation digits of the 40x40 setup.
LEARN_THRESHOLD = 0.9
TARGET_FRACTION = 0.25  # our choice: CapsNet bf16 training at >= 25% of the bf16 matmul rate
PROFILE = "paper"


@dataclass(frozen=True)
class CheckSettings:
    """Sizes of every section: the defaults for a GPU, :meth:`quick_settings` for a CPU."""

    quick: bool = False
    budget_s: float = 420.0  # whole command; later sections are skipped rather than overrun
    hard_grace_s: float = 30.0  # a section still running this long after the budget is interrupted
    width: float = 1.0  # the paper's model size
    batch_sizes: tuple[int, ...] = (128, 512)  # paper.toml [throughput]
    warmup: int = 5  # paper.toml [throughput]
    repeats: int = 20
    matmul_n: int = 8192  # our choice: a product large enough to be compute-bound on a GPU
    matmul_repeats: int = 30
    agree_digits: int = 1000  # x agree_k affine transforms, and the scrambled sets
    agree_k: int = 4
    agree_sweep_n: int = 100  # digits per sweep point
    agree_images: int = 64  # images through each model, CPU vs CUDA
    gen_digits: int = 10_000  # generation rate: 10,000 digits x 4 transforms
    gen_k: int = 4
    learn_n: int = 10_000
    learn_steps: int = 500  # cap on the paper cell's 3,907 steps so that it fits the budget
    learn_batch: int | None = None  # None: the profile's (128)
    learn_val: int | None = None  # None: the profile's (5,000)
    learn_threshold: float | None = LEARN_THRESHOLD
    compile_backend: str = "inductor"
    compile_precisions: tuple[str, ...] = ("bf16", "fp32")  # bf16 first: the target's precision
    eager_reserve_s: float = 150.0  # eager rows stop when less than this is left (learning next)
    compile_guess_s: float = 40.0  # assumed cost of the first compiled row (then: the max seen)

    @classmethod
    def quick_settings(cls, device: torch.device) -> CheckSettings:
        """Tiny everything; on the CPU ``torch.compile`` traces with ``aot_eager`` (Dynamo and
        AOTAutograd, no code generation), which finds graph breaks and tracing errors in
        seconds, where Inductor's C++ compile would take minutes."""
        return cls(quick=True, budget_s=120.0, width=0.0625, batch_sizes=(8,), warmup=1,
                   repeats=2, matmul_n=256, matmul_repeats=3, agree_digits=40, agree_k=2,
                   agree_sweep_n=10, agree_images=8, gen_digits=100, gen_k=2, learn_n=100,
                   learn_steps=6, learn_batch=8, learn_val=64, learn_threshold=None,
                   eager_reserve_s=0.0, compile_guess_s=0.0, compile_precisions=("bf16",),
                   compile_backend="inductor" if device.type == "cuda" else "aot_eager")


@contextlib.contextmanager
def _tf32(enabled: bool) -> Iterator[None]:
    """Set both TF32 switches (cuBLAS matmuls and cuDNN convolutions), restore them after."""
    prev = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = prev


def _precision(bf16: bool) -> str:
    return "bf16" if bf16 else "fp32"


class GpuCheck:
    """Runs the sections in order, each guarded, and keeps the report up to date on disk."""

    def __init__(self, settings: CheckSettings, device: torch.device, out: Path,
                 log: Callable[[str], None] = print):
        self.settings, self.device, self.out, self.log = settings, device, Path(out), log
        self.start = time.perf_counter()
        self.profile = load_profile(PROFILE)
        self.models = self.profile.models
        self.mnist_models = self.profile.mnist_table.models if self.profile.mnist_table else ()
        self.cuda = device.type == "cuda"
        # As the trainer (bench.cell.train) runs: bf16 autocast and channels_last on CUDA only.
        self.train_bf16 = self.cuda and self.profile.train.bf16
        self.channels_last = self.cuda and self.profile.train.channels_last
        self.sections: dict[str, dict[str, Any]] = {}
        self.rates: dict[str, float] = {}  # matmul FLOP/s by precision

    # ----- bookkeeping

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        """Seconds left of the budget of the whole command."""
        return self.settings.budget_s - self.elapsed()

    def save(self, finished: bool = False) -> dict[str, Any]:
        """Write the report (JSON and Markdown) as it stands, and return it."""
        rep = {"schema": 1, "quick": self.settings.quick, "device": str(self.device),
               "device_name": device_name(self.device), "budget_s": self.settings.budget_s,
               "elapsed_s": self.elapsed(), "finished": finished,
               "settings": dataclasses.asdict(self.settings), "sections": self.sections}
        write_json(self.out / "gpu-check.json", rep)
        write_text(self.out / "gpu-check.md", render_markdown(rep))
        return rep

    def section(self, name: str, fn: Callable[[], dict[str, Any]], need_s: float = 0.0,
                skip: str | None = None) -> dict[str, Any]:
        """Run one section: its result, ``skipped: ...`` or the error, recorded and saved."""
        start = time.perf_counter()
        left = self.left()
        if skip is not None:
            entry = {"status": "skipped", "reason": f"skipped: {skip}"}
        elif left < need_s:
            entry = {"status": "skipped",
                     "reason": f"skipped: time budget ({left:.0f} s left of {self.settings.budget_s:.0f} s,"
                               f" this section needs ~{need_s:.0f} s)"}
        else:
            try:
                with _deadline(left + self.settings.hard_grace_s):
                    entry = {"status": "ok", **fn()}
            except Exception as e:  # any failure is data: record it and go on
                entry = {"status": "error", "error": _one_line(e),
                         "traceback": traceback.format_exc().splitlines()[-12:]}
                self._free()
        entry["seconds"] = time.perf_counter() - start
        self.sections[name] = entry
        self.save()
        summary = entry.get("summary") or entry.get("reason") or entry.get("error") or ""
        self.log(f"[{self.elapsed():6.1f} s] {name}: {entry['status']} "
                 f"({entry['seconds']:.1f} s) {summary}")
        return entry

    def _free(self) -> None:
        if self.cuda:
            torch.cuda.empty_cache()

    def _ok(self, name: str) -> dict[str, Any] | None:
        s = self.sections.get(name)
        return s if s and s.get("status") == "ok" else None

    def _rows(self, *names: str) -> list[dict[str, Any]]:
        """The rows of the sections ``names`` that finished."""
        return [r for name in names for r in (self._ok(name) or {}).get("rows", [])]

    def _achieved(self, row: dict[str, Any], kind: str, flops: float | None, images_per_s,
                  precision: str) -> None:
        """Add ``tflops_<kind>`` and ``frac_matmul_<kind>`` (of the matmul rate of
        ``precision``) to ``row``."""
        if flops and images_per_s:
            ref = self.rates.get(precision)
            row[f"tflops_{kind}"] = flops * images_per_s / 1e12
            row[f"frac_matmul_{kind}"] = flops * images_per_s / ref if ref else None

    # ----- sections

    def run(self) -> dict[str, Any]:
        s, full = self.settings, not self.settings.quick
        no_cuda = None if self.cuda else (
            "no CUDA device selected (--device cpu)" if torch.cuda.is_available()
            else "no CUDA (CPU versus CUDA needs a GPU)")
        self.section("environment", self.environment)
        self.section("flops", self.count_flops)
        self.section("matmul", self.matmul)
        self.section("agreement_testsets", self.agreement_testsets, 15 * full, skip=no_cuda)
        self.section("agreement_models", self.agreement_models, 15 * full, skip=no_cuda)
        self.section("throughput_eager", self.throughput_eager, 30 * full)
        self.section("throughput_28", self.throughput_28, s.eager_reserve_s + 10 * full)
        self.section("generation", self.generation, 10 * full)
        self.section("learning", self.learning, 30 * full)
        self.section("estimate", self.estimate)
        self.section("throughput_compiled", self.throughput_compiled, s.compile_guess_s)
        self.section("target", self.target)
        return self.save(finished=True)

    def environment(self) -> dict[str, Any]:
        env: dict[str, Any] = {
            "device_name": device_name(self.device),
            "versions": versions(),
            "git_commit": git_commit(),
            "torch_cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if self.cuda else None,
            "allow_tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
            "allow_tf32_cudnn": torch.backends.cudnn.allow_tf32,
            "cudnn_benchmark": torch.backends.cudnn.benchmark,
            "cpu_threads": torch.get_num_threads(),
            # imported later by the data and training code: a missing one fails those sections
            "missing_modules": [m for m in ("kornia", "kornia_rs", "tqdm")
                                if importlib.util.find_spec(m) is None],
        }
        if self.cuda:
            props = torch.cuda.get_device_properties(self.device)
            env.update(gpu_memory_gb=props.total_memory / 1e9, sm_count=props.multi_processor_count)
        env["summary"] = f"{env['device_name']}, torch {env['versions'].get('torch')}" + (
            f", MISSING {', '.join(env['missing_modules'])}" if env["missing_modules"] else "")
        return env

    def count_flops(self) -> dict[str, Any]:
        w = self.settings.width
        rows = [{"model": name, "input_size": size, "width": w,
                 "flops_per_image": flops_per_image(name, size, w),
                 "flops_train_per_image": flops_per_image(name, size, w, train=True)}
                for name, size in [(m, 40) for m in self.models] + [(m, 28) for m in self.mnist_models]]
        caps = next(r for r in rows if r["model"] == "capsnet" and r["input_size"] == 40)
        return {"rows": rows, "summary": f"capsnet 40x40 train step "
                                         f"{caps['flops_train_per_image'] / 1e9:.2f} GFLOP/image"}

    def matmul(self) -> dict[str, Any]:
        s = self.settings
        kinds = [("bf16", torch.bfloat16, False), ("fp32", torch.float32, False)] + (
            [("tf32", torch.float32, True)] if self.cuda else [])
        out: dict[str, Any] = {"n": s.matmul_n}
        for label, dtype, tf32 in kinds:
            with _tf32(True) if tf32 else contextlib.nullcontext():
                rate = matmul_rate(self.device, dtype, s.matmul_n, repeats=s.matmul_repeats,
                                   warmup=s.matmul_repeats)
            self.rates[label] = rate
            out[f"{label}_tflops"] = rate / 1e12
        out["note"] = ("fp32 as torch is configured (allow_tf32_matmul in environment); "
                       "fp32 model rows are compared with it, bf16 rows with bf16")
        out["summary"] = ", ".join(f"{k} {out[f'{k}_tflops']:.1f}" for k, _, _ in kinds) + " TFLOP/s"
        return out

    def agreement_testsets(self) -> dict[str, Any]:

        s = self.settings
        cfg = dataclasses.replace(self.profile.data, n_test=s.agree_digits, affnist_k=s.agree_k,
                                  sweep_n=s.agree_sweep_n)
        digits = load_split("test", cfg.dataset)[0][: cfg.n_test]
        clean = place(digits, cfg.canvas)
        rows = []
        for name in default_set_names(cfg):
            if set_kind(name).family in ("clean", "real"):  # nothing generated on the device
                continue
            cpu = generate(name, cfg, "cpu")
            gpu = generate(name, cfg, self.device)
            diff = cpu.images.int() - gpu.images.int()
            row: dict[str, Any] = {
                "set": name, "images": len(cpu),
                "uint8_pixels_differ": int(diff.ne(0).sum()),
                "uint8_images_differ": int(diff.ne(0).flatten(1).any(1).sum()),
                "uint8_max_abs_diff": int(diff.abs().max()),
                "labels_equal": bool(torch.equal(cpu.labels, gpu.labels)),
                "params_equal": all(torch.equal(v, gpu.params[k]) for k, v in cpu.params.items()),
            }
            row["uint8_fraction_differ"] = row["uint8_pixels_differ"] / cpu.images.numel()
            if set_kind(name).warped:
                src, m = clean[cpu.params["source"]], cpu.params["matrix"]
                f_cpu = affine.warp_float(src, m)
                f_gpu = affine.warp_float(src.to(self.device), m.to(self.device)).cpu()
                d = (f_cpu - f_gpu).abs()
                row.update(float_max_abs_diff=float(d.max()),
                           float_pixels_over_tol=int(d.gt(WARP_TOL).sum()),
                           float_ok=bool(d.max() <= WARP_TOL))
            else:
                row["float_ok"] = row["uint8_pixels_differ"] == 0  # integer-only: must be equal
            rows.append(row)
        all_ok = all(r["float_ok"] for r in rows)
        pixels = sum(r["uint8_pixels_differ"] for r in rows)
        worst = max((r.get("float_max_abs_diff", 0.0) for r in rows), default=0.0)
        return {"tolerance": WARP_TOL, "all_ok": all_ok, "rows": rows,
                "summary": f"{'ok' if all_ok else 'FAILED'}: float max diff {worst:.2e} "
                           f"(tol {WARP_TOL:g}), {pixels} uint8 pixels differ"}

    def agreement_models(self) -> dict[str, Any]:
        s, canvas = self.settings, self.profile.data.canvas
        digits = load_split("test", self.profile.data.dataset)[0][: s.agree_images]
        x = to_float(place(digits, canvas))
        rows = []
        with _tf32(False):
            for name in self.models:
                model = build_model(TrainSpec(name, 0, 0, canvas=canvas, width=s.width)).eval()
                model_gpu = copy.deepcopy(model).to(self.device)
                with torch.no_grad():
                    a, b = model(x), model_gpu(x.to(self.device))
                row: dict[str, Any] = {"model": name}
                for field in ("scores", "logits", "features", "reconstruction"):
                    ta, tb = getattr(a, field), getattr(b, field)
                    if ta is not None:
                        row[f"{field}_max_abs_diff"] = float((ta - tb.cpu()).abs().max())
                row["argmax_agree"] = float(a.scores.argmax(1).eq(b.scores.argmax(1).cpu()).float().mean())
                row["ok"] = row["scores_max_abs_diff"] <= SCORE_TOL
                rows.append(row)
                del model_gpu
                self._free()
        worst = max(r["scores_max_abs_diff"] for r in rows)
        all_ok = all(r["ok"] for r in rows)
        return {"tolerance": SCORE_TOL, "tf32": False, "images": int(x.shape[0]), "rows": rows,
                "all_ok": all_ok,
                "summary": f"{'ok' if all_ok else 'FAILED'}: max |score diff| {worst:.2e} "
                           f"(tol {SCORE_TOL:g})"}

    def _row(self, name: str, size: int, batch: int, bf16: bool, compiled: bool = False,
             train: bool = True, infer: bool = True, need_s: float = 0.0) -> dict[str, Any]:
        """One guarded :func:`bench.cell.throughput.measure` row with fractions of the matmul rate;
        skipped when less than ``need_s`` seconds of the budget are left."""
        s, precision = self.settings, _precision(bf16)
        row: dict[str, Any] = {"model": name, "input_size": size, "width": s.width,
                               "batch": batch, "mode": "compiled" if compiled else "eager",
                               "precision": precision, "channels_last": self.channels_last,
                               "matmul_ref": precision}
        if self.left() < need_s:
            return {**row, "skipped": f"time budget ({self.left():.0f} s left, {need_s:.0f} s "
                                      "needed or reserved)"}
        start = time.perf_counter()
        try:
            row.update(measure(name, size, batch, s.width, self.device, s.warmup, s.repeats,
                               bf16, compiled, backend=s.compile_backend, train=train,
                               infer=infer, latency=False, channels_last=self.channels_last))
        except Exception as e:
            row["error"] = _one_line(e)
            self._free()
        row["seconds"] = time.perf_counter() - start
        for kind, flops in (("train", "flops_train_per_image"), ("infer", "flops_per_image")):
            self._achieved(row, kind, row.get(flops), row.get(f"{kind}_images_per_s"), precision)
        return row

    def throughput_eager(self) -> dict[str, Any]:
        s = self.settings
        rows = [self._row(name, 40, batch, bf16, need_s=s.eager_reserve_s)
                for bf16 in (True, False) for name in self.models for batch in s.batch_sizes]
        return {"rows": rows, "summary": _rows_summary(rows)}

    def throughput_28(self) -> dict[str, Any]:
        """Training (the trainer's precision, batch 128, as paper.toml) and evaluation (fp32,
        batch 512, as ``evaluate.predict``) rates at 28x28 of the paper's MNIST-table models."""
        s = self.settings
        train_batch, eval_batch = min(s.batch_sizes), max(s.batch_sizes)
        rows = [r for name in self.mnist_models for r in (
            self._row(name, 28, train_batch, self.train_bf16, infer=False, need_s=s.eager_reserve_s),
            self._row(name, 28, eval_batch, False, train=False, need_s=s.eager_reserve_s))]
        return {"rows": rows, "summary": _rows_summary(rows)}

    def generation(self) -> dict[str, Any]:

        s = self.settings
        cfg = dataclasses.replace(self.profile.data, n_test=s.gen_digits, affnist_k=s.gen_k)
        generate("affnist", dataclasses.replace(cfg, n_test=10, affnist_k=1), self.device)  # warm-up
        made = []  # timed() keeps no return value
        seconds = timed(lambda: made.append(generate("affnist", cfg, self.device)), self.device, 0, 1)
        ts = made[0]
        # the warp alone, data resident on the device (what a bigger set scales with)
        digits = load_split("test", cfg.dataset)[0][: cfg.n_test]
        clean = place(digits, cfg.canvas).to(self.device)
        src = clean[ts.params["source"].to(self.device)]
        m = ts.params["matrix"].to(self.device)
        warp_s = timed(lambda: affine.warp(src, m), self.device, 1, 3)
        n = len(ts)
        return {"digits": cfg.n_test, "k": cfg.affnist_k, "images": n, "generate_s": seconds,
                "images_per_s": n / seconds, "warp_only_images_per_s": n / warp_s,
                "summary": f"{n / seconds:,.0f} images/s end to end, "
                           f"{n / warp_s:,.0f} images/s warp only"}

    def learning(self) -> dict[str, Any]:
        s = self.settings
        rows = []
        for name in self.models:
            if self.left() < (20 if not s.quick else 0):
                rows.append({"model": name, "skipped": "time budget"})
                continue
            rows.append(self._learn_one(spec_for(self.profile, Cell("affnist", name, s.learn_n, 0))))
        done = [r for r in rows if "val_accuracy" in r]
        passed = sum(bool(r.get("learned")) for r in done)
        summary = f"{len(done)} cells trained"
        if s.learn_threshold is not None:
            summary += f", {passed} above {s.learn_threshold:g} validation accuracy"
        accs = ", ".join(f"{r['model']} {r['val_accuracy']:.3f}" for r in done)
        return {"threshold": s.learn_threshold, "rows": rows,
                "all_learned": bool(done) and passed == len(done) and len(done) == len(rows),
                "summary": f"{summary} ({accs})"}

    def _learn_one(self, spec) -> dict[str, Any]:
        s, name = self.settings, spec.model
        t = spec.train
        train = dataclasses.replace(
            t, steps=s.learn_steps, min_steps=s.learn_steps, max_steps=s.learn_steps,
            eval_every=max(1, s.learn_steps // 2),
            batch_size=s.learn_batch or t.batch_size,
            val_size=t.val_size if s.learn_val is None else s.learn_val)
        spec = dataclasses.replace(spec, width=s.width, train=train)
        row: dict[str, Any] = {"model": name, "input_size": spec.canvas, "mode": "trainer",
                               "n": spec.n, "steps": step_budget(train, spec.n),
                               "batch": train.batch_size, "precision": _precision(self.train_bf16),
                               "channels_last": train.channels_last, "width": spec.width}
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        start = time.perf_counter()
        try:
            with _kept_determinism(), tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
                summary = train_cell(spec, tmp, self.device, progress=False)
        except Exception as e:
            row["error"] = _one_line(e)
            self._free()
            return row
        row["wall_s"] = time.perf_counter() - start
        hist = summary["history"]
        row.update(
            val_accuracy=hist[-1]["val_accuracy"] if hist else None,
            best_val_accuracy=summary["best_val_accuracy"],
            history=hist, train_seconds=summary["train_seconds"],
            train_images_per_s=summary["images_per_s"], final_loss=summary["final_loss"],
            peak_mb=torch.cuda.max_memory_allocated(self.device) / 2**20 if self.cuda else None,
            validations=len(hist), val_size=train.val_size,
        )
        if row["val_accuracy"] is not None and s.learn_threshold is not None:
            row["learned"] = row["val_accuracy"] >= s.learn_threshold
        with contextlib.suppress(Exception):  # a FLOP-count failure is the flops section's
            flops = flops_per_image(name, spec.canvas, spec.width, train=True)
            self._achieved(row, "train", flops, row["train_images_per_s"], row["precision"])
        return row

    def estimate(self) -> dict[str, Any]:
        """The ``paper`` profile's wall time (:func:`bench.runner.estimate.estimate_from_measurements`):
        training rates from ``learning`` or the eager rows at batch 128 in the trainer's precision,
        inference from the fp32 rows at batch 512 (``evaluate.predict``: fp32, batches of 500)."""

        rows = [r for r in self._rows("throughput_eager", "throughput_28") if "error" not in r]
        learn = [r for r in self._rows("learning") if r.get("train_images_per_s")]
        gen = self._ok("generation")
        if gen is None:
            raise RuntimeError("no generation rate (the generation section did not finish)")
        est = estimate_from_measurements(
            self.profile, rows, learn, gen["images_per_s"], train_batch=min(self.settings.batch_sizes),
            eval_batch=max(self.settings.batch_sizes), precision=_precision(self.train_bf16))
        if self.settings.quick:
            est["note"] = "quick mode: rates of tiny models, not an estimate of the real run"
        est["summary"] = (f"{est['total_h']:.1f} h for {est['cells']} cells "
                          f"(train {est['train_s'] / 3600:.1f} h, eval {est['eval_s'] / 3600:.1f} h)")
        return est

    def throughput_compiled(self) -> dict[str, Any]:
        """Compiled rows, CapsNet bf16 first, while the budget lasts: a row starts only when the
        time left exceeds the longest compiled row so far (compiling cannot be interrupted)."""
        s = self.settings
        rows: list[dict[str, Any]] = []
        longest = s.compile_guess_s
        for precision in s.compile_precisions:
            for name in self.models:
                for batch in s.batch_sizes:
                    start = time.perf_counter()
                    try:  # _row records errors itself; this catches an alarm outside its try
                        row = self._row(name, 40, batch, precision == "bf16", True, need_s=longest)
                    except _OutOfTime as e:
                        row = {"model": name, "batch": batch, "mode": "compiled",
                               "precision": precision, "error": str(e),
                               "seconds": time.perf_counter() - start}
                    rows.append(row)
                    if "seconds" in row:
                        longest = max(longest, row["seconds"])
                        self.log(f"    compiled {name} b{batch} {precision}: "
                                 f"{row.get('train_images_per_s') or float('nan'):.0f} img/s "
                                 f"train ({row['seconds']:.0f} s)")
        return {"backend": s.compile_backend, "rows": rows, "summary": _rows_summary(rows)}

    def target(self) -> dict[str, Any]:
        keys = ("mode", "batch", "train_images_per_s", "tflops_train", "frac_matmul_train")
        cands = [{k: r.get(k) for k in keys}
                 for r in self._rows("throughput_eager", "throughput_compiled", "learning")
                 if r.get("model") == "capsnet" and r.get("precision") == "bf16"
                 and r.get("frac_matmul_train") is not None and r.get("input_size") == 40]
        if not cands:
            raise RuntimeError("no CapsNet bf16 training rate was measured")
        best = max(cands, key=lambda c: c["frac_matmul_train"])
        return {"target_fraction": TARGET_FRACTION, "candidates": cands, "best": best,
                "meets_target": best["frac_matmul_train"] >= TARGET_FRACTION,
                "summary": f"capsnet bf16 train: best {best['frac_matmul_train']:.1%} of the bf16 "
                           f"matmul rate ({best['mode']}, batch {best['batch']}; target "
                           f">= {TARGET_FRACTION:.0%}, reported only)"}


class _OutOfTime(Exception):
    pass


@contextlib.contextmanager
def _deadline(seconds: float) -> Iterator[None]:
    """Raise :class:`_OutOfTime` in the main thread after ``seconds`` (SIGALRM), where possible.

    The budget is a promise about the whole command, and neither an Inductor compile nor a
    slow training cell has a known duration. Nested deadlines restore the enclosing one.
    Elsewhere (a worker thread, no SIGALRM) a no-op.
    """
    usable = hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
    if not usable:
        yield
        return

    def handler(signum, frame):
        raise _OutOfTime(f"time budget reached after {seconds:.0f} s (compiling or running)")

    start = time.perf_counter()
    prev = signal.signal(signal.SIGALRM, handler)
    outer, _ = signal.setitimer(signal.ITIMER_REAL, max(seconds, 1e-3))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, prev)
        if outer > 0:  # an enclosing deadline keeps running
            signal.setitimer(signal.ITIMER_REAL, max(outer - (time.perf_counter() - start), 1e-3))


def _rows_summary(rows: list[dict[str, Any]]) -> str:
    done = sum(bool(r.get("train_images_per_s") or r.get("infer_images_per_s")) for r in rows)
    return (f"{done} rows measured, {sum('error' in r for r in rows)} errors, "
            f"{sum('skipped' in r for r in rows)} skipped")


def _one_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}".splitlines()[0]


@contextlib.contextmanager
def _kept_determinism() -> Iterator[None]:
    """Restore the determinism switches after the block: the trainer switches deterministic
    kernels on for the process, and later timings must not inherit that."""
    flags = (torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled())
    cudnn = (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(flags[0], warn_only=flags[1])
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = cudnn


# --------------------------------------------------------------------------------------------
# The report as Markdown (cells rendered by bench.report.table.Table)


def _fmt(v: Any, spec: str = ",.0f") -> str:
    if v is None:
        return "-"
    return format(v, spec) if isinstance(v, float) else str(v)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    from bench.report.table import Table  # imports pandas and matplotlib: only when rendering

    return ["", Table("gpu-check", "", header, rows, "l" * len(header)).markdown()]


def _note(r: dict[str, Any]) -> str:
    breaks = f"{r['graph_breaks']} graph breaks" if r.get("graph_breaks") else ""
    return " ".join(t for t in (breaks, (r.get("error") or r.get("skipped") or "")[:80]) if t)


_RATES = (("model", "model", ""), ("size", "input_size", ""), ("batch", "batch", ""),
          ("mode", "mode", ""), ("prec", "precision", ""),
          ("train img/s", "train_images_per_s", ",.0f"), ("infer img/s", "infer_images_per_s", ",.0f"),
          ("train TFLOP/s", "tflops_train", ".2f"), ("of matmul", "frac_matmul_train", ".1%"),
          ("peak MB", "peak_mem_mb", ",.0f"))
# (section, title, columns as (header, key, format of a float)) of the detail tables
_DETAILS = (
    ("throughput_eager", "throughput_eager", _RATES),
    ("throughput_28", "throughput_28", _RATES),
    ("throughput_compiled", "throughput_compiled", _RATES),
    ("learning", "learning (paper cell, capped steps)",
     (("model", "model", ""), ("n", "n", ""), ("steps", "steps", ""),
      ("val acc", "val_accuracy", ".4f"), ("learned", "learned", ""),
      ("img/s", "train_images_per_s", ",.0f"), ("TFLOP/s", "tflops_train", ".2f"),
      ("of matmul", "frac_matmul_train", ".1%"), ("wall s", "wall_s", ".1f"))),
    ("agreement_testsets", "agreement_testsets", tuple((c, c, ".2e") for c in (
        "set", "images", "float_max_abs_diff", "uint8_pixels_differ", "float_ok"))),
    ("agreement_models", "agreement_models", tuple((c, c, ".2e") for c in (
        "model", "scores_max_abs_diff", "logits_max_abs_diff", "argmax_agree", "ok"))),
)


def render_markdown(rep: dict[str, Any]) -> str:
    """The report as Markdown: a status line per section, then the detail tables."""
    sec = rep["sections"]
    lines = [f"# gpu-check on {rep['device_name']}{' (quick)' if rep['quick'] else ''}", "",
             f"{rep['elapsed_s']:.0f} s of a {rep['budget_s']:.0f} s budget"
             f"{'' if rep['finished'] else ' (unfinished)'}"]
    status = []
    for name in SECTIONS:
        e = sec.get(name) or {"status": "not run"}
        text = e.get("summary") or e.get("reason") or e.get("error") or ""
        status.append([name, e["status"], _fmt(e.get("seconds"), ".1f"), text])
    lines += _table(["section", "status", "seconds", "summary"], status)
    for name, title, cols in _DETAILS:
        rows = (sec.get(name) or {}).get("rows")
        if rows:
            lines += ["", f"## {title}", *_table(
                [c[0] for c in cols] + ["note"],
                [[_fmt(r.get(key), spec) for _, key, spec in cols] + [_note(r)] for r in rows])]
    est = sec.get("estimate") or {}
    if est.get("status") == "ok":
        lines += ["", f"## estimate of the `{est['profile']}` profile", "",
                  f"total {est['total_s']:,.0f} s = {est['total_h']:.2f} h over {est['cells']} cells: "
                  + ", ".join(f"{k[:-2]} {est[k]:,.0f} s" for k in
                              ("data_s", "train_s", "val_s", "eval_s", "attack_s", "overhead_s",
                               "extra_s") if k in est),
                  "", f"Method: {est['method']}"]
        if est.get("note"):
            lines += ["", est["note"]]
    return "\n".join(lines) + "\n"


def run_gpu_check(out: Path, quick: bool, budget_s: float | None, device_name: str) -> int:
    """``python -m bench gpu-check``: run every section, write JSON and Markdown, print the table.

    Returns 0 when every section ran (or was skipped), 1 when one recorded an error; the JSON and
    table are written either way.
    """
    device = resolve_device(device_name)
    if device.type != "cuda" and not quick:
        raise BenchError("gpu-check needs CUDA; use --quick to exercise it on the CPU")
    settings = CheckSettings.quick_settings(device) if quick else CheckSettings()
    if budget_s is not None:
        settings = dataclasses.replace(settings, budget_s=budget_s)
    out = Path(out)
    print(f"gpu-check{' --quick' if quick else ''} on {device}, budget "
          f"{settings.budget_s:.0f} s, writing {out}/gpu-check.json")
    rep = GpuCheck(settings, device, out).run()
    print()
    print(render_markdown(rep))
    errors = [n for n, e in rep["sections"].items() if e["status"] == "error"]
    print(f"wrote {out / 'gpu-check.json'} and {out / 'gpu-check.md'} in {rep['elapsed_s']:.0f} s"
          + (f"; errors in: {', '.join(errors)}" if errors else ""))
    return 1 if errors else 0
