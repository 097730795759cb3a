"""Where a training step's time goes: one command, parts that add up to the whole step.

    python tests/benchmarks/step_breakdown.py --model capsnet --width 0.125 --size 40 --batch 32
    python tests/benchmarks/step_breakdown.py --model capsnet --width 1 --size 28 --batch 32
    python tests/benchmarks/step_breakdown.py ... --against 556059f   # old vs new, alternated

The step is the trainer's (built by ``tests/benchmarks/test_bench_models.py``: seeded model,
``TrainConfig()`` defaults: fused Adam, channels-last, fp32; glibc malloc keeping freed memory).
Three measurements on the same model and inputs, in one process:

1. The whole step, :func:`bench.cell.train.optimizer_step`, timed with ``perf_counter`` (CPU ops are
   synchronous; on CUDA every mark synchronises).
2. The same step cut into stages by timestamps: forward marks around the model's
   ``primary_capsules`` and ``digit_capsules`` (CapsNet only), backward marks from tensor hooks
   that fire when the gradient reaches the capsule layer's output ``v`` and its input ``u``, then
   ``optimizer.step``. The stages partition the step, so they add up to it by construction; the
   script prints their sum beside the whole step of (1) to show that the marks cost nothing.
3. ``torch.profiler`` over a few steps: per operator with input shapes, and the profiler's own
   per-step total, which shows how much the profiler itself inflates what it measures.

FLOPs per stage are counted as :mod:`bench.flops` counts them (torch's ``FlopCounterMode`` on the
``meta`` device, 2 per multiply-add); GFLOP/s per stage and the step's share of this machine's sgemm
rate (a 2048^3 float32 matmul, measured here) are printed with them.

With ``--against COMMIT`` the CapsNet of that commit (``git show COMMIT:bench/models/capsnet.py``
written to a temporary folder and imported from there, with the same weights) is timed too,
rounds alternating old and new, and the best of each is compared.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]  # this checkout's bench first

from test_bench_models import TRAIN, _train_step  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from bench.cell.train import optimizer_step  # noqa: E402
from bench.flops import flops_per_image  # noqa: E402

FORWARD = ("forward: primary capsules (conv1, PrimaryCaps conv, squash)",
           "forward: capsule layer (predictions + routing)",
           "forward: lengths, decoder, loss")
BACKWARD = ("backward: loss, decoder",
            "backward: capsule layer (routing + predictions)",
            "backward: PrimaryCaps, conv1")
OPTIMIZER = "optimizer: zero_grad + fused Adam"


def sgemm_rate(n: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of one n x n x n float32 matmul, best of ``repeats``."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_step(step: Callable[[], object], device: torch.device, n: int) -> list[float]:
    """Seconds of each of ``n`` calls of ``step``."""
    times = []
    for _ in range(n):
        _sync(device)
        start = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - start)
    return times


class StageClock:
    """The step cut into stages by timestamps (see the module docstring, item 2)."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, x, y):
        self.model, self.optimizer, self.x, self.y = model, optimizer, x, y
        self.capsnet = hasattr(model, "primary_capsules") and hasattr(model, "digit_capsules")
        self.marks: dict[str, float] = {}
        if self.capsnet:
            primary, digit = model.primary_capsules, model.digit_capsules

            def primary_capsules(x):
                u = primary(x)
                self._mark("fw_primary")
                u.register_hook(lambda g: self._mark("bw_caps"))
                return u

            def digit_capsules(u):
                v, c = digit(u)
                self._mark("fw_caps")
                v.register_hook(lambda g: self._mark("bw_head"))
                return v, c

            model.primary_capsules = primary_capsules  # instance attributes shadow the methods
            model.digit_capsules = digit_capsules

    def _mark(self, name: str, *_) -> None:
        _sync(self.x.device)
        self.marks[name] = time.perf_counter()

    def step(self) -> dict[str, float]:
        """One step as :func:`bench.cell.train.optimizer_step` runs it; seconds per stage."""
        self.marks = {}
        self._mark("start")
        out = self.model(self.x, self.y)
        loss = self.model.loss(out, self.x, self.y)
        self._mark("fw_end")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self._mark("bw_end")
        self.optimizer.step()
        self._mark("end")
        m = self.marks
        if not self.capsnet:
            return {"forward + loss": m["fw_end"] - m["start"],
                    "backward": m["bw_end"] - m["fw_end"], OPTIMIZER: m["end"] - m["bw_end"]}
        return {
            FORWARD[0]: m["fw_primary"] - m["start"],
            FORWARD[1]: m["fw_caps"] - m["fw_primary"],
            FORWARD[2]: m["fw_end"] - m["fw_caps"],
            BACKWARD[0]: m["bw_head"] - m["fw_end"],
            BACKWARD[1]: m["bw_caps"] - m["bw_head"],
            BACKWARD[2]: m["bw_end"] - m["bw_caps"],
            OPTIMIZER: m["end"] - m["bw_end"],
        }


def stage_flops(name: str, size: int, width: float, batch: int) -> dict[str, float]:
    """FLOPs of the step per stage (CapsNet), counted on ``meta`` as :mod:`bench.flops` does."""
    from bench.models.registry import create_model

    with torch.device("meta"):
        model = create_model(name, input_size=size, width=width)
        x = torch.rand(batch, 1, size, size)
        y = torch.randint(0, 10, (batch,))
    model.train()
    counts: dict[str, float] = {}
    for phase in ("forward", "train"):
        counter = FlopCounterMode(display=False)
        with counter:
            out = model(x, y)
            loss = model.loss(out, x, y)
            if phase == "train":
                loss.backward()
        per_module = {k: sum(v.values()) for k, v in counter.get_flop_counts().items()}
        counts[phase] = per_module
    fw, tr = counts["forward"], counts["train"]
    top = "Global"
    if not hasattr(model, "primary_capsules"):
        return {"forward + loss": fw[top], "backward": tr[top] - fw[top], OPTIMIZER: 0.0}
    convs = [k for k in fw if k.endswith((".conv1", ".primary"))]
    decoder = [k for k in fw if k.endswith(".decoder")]

    def parts(c):
        conv = sum(c.get(k, 0) for k in convs)
        dec = sum(c.get(k, 0) for k in decoder)
        return conv, c[top] - conv - dec, dec

    fconv, fcaps, fdec = parts(fw)
    tconv, tcaps, tdec = parts(tr)
    return {FORWARD[0]: fconv, FORWARD[1]: fcaps, FORWARD[2]: fdec,
            BACKWARD[0]: tdec - fdec, BACKWARD[1]: tcaps - fcaps, BACKWARD[2]: tconv - fconv,
            OPTIMIZER: 0.0}


def load_capsnet_at(commit: str):
    """The module ``bench/models/capsnet.py`` as it was at ``commit``, imported from a temporary
    file (it registers nothing: registration would clash with the current module's names)."""
    source = subprocess.run(["git", "-C", str(ROOT), "show", f"{commit}:bench/models/capsnet.py"],
                            check=True, capture_output=True, text=True).stdout
    source = source.replace("@register_model(", "@(lambda *a, **k: (lambda f: f))(")
    path = Path(tempfile.mkdtemp()) / f"capsnet_{commit}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(f"capsnet_{commit}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def reference_step(model: torch.nn.Module, module, size: int, width: float, x, y):
    """The same step with ``module``'s CapsNet, holding ``model``'s weights."""
    ref = module.CapsNet(input_size=size, width=width, iterations=model.iterations,
                         reconstruction=model.decoder is not None)
    ref.load_state_dict(model.state_dict())
    ref.recon_weight = model.recon_weight
    if TRAIN.channels_last:
        ref = ref.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(ref.parameters(), lr=TRAIN.lr, fused=TRAIN.fused_optimizer or None)
    ref.train()
    return ref, opt, lambda: optimizer_step(ref, ref, opt, x, y)


def print_differences(ref: torch.nn.Module, model: torch.nn.Module, x, y, label: str) -> None:
    """Largest difference of v, c, the loss and the gradients between the two models (same
    weights, same inputs), relative to the largest magnitude of ``ref``'s."""
    results = []
    for m in (ref, model):
        m.zero_grad(set_to_none=True)
        v, c = m.digit_capsules(m.primary_capsules(x))
        loss = m.loss(m(x, y), x, y)
        loss.backward()
        results.append([v.detach(), c.detach(), loss.detach()] + [p.grad for p in m.parameters()])
        m.zero_grad(set_to_none=True)
    rel = [float((b - a).abs().max() / a.abs().max()) for a, b in zip(*results, strict=True)]
    print(f"current against {label}, max relative difference: v {rel[0]:.1e}, c {rel[1]:.1e}, "
          f"loss {rel[2]:.1e}, gradients {max(rel[3:]):.1e}")


def pressure() -> str:
    try:
        return Path("/proc/pressure/cpu").read_text().splitlines()[0]
    except OSError:
        return "n/a"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="capsnet")
    p.add_argument("--width", type=float, default=0.125)
    p.add_argument("--size", type=int, default=40)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3, help="rounds; best of them is reported")
    p.add_argument("--steps", type=int, default=10, help="steps per round")
    p.add_argument("--profile-steps", type=int, default=5)
    p.add_argument("--against", metavar="COMMIT", help="also time this commit's CapsNet, alternated")
    p.add_argument("--row-limit", type=int, default=25)
    p.add_argument("--matmul-precision", choices=("highest", "high", "medium"),
                   help="torch.set_float32_matmul_precision for the whole run (default: torch's)")
    args = p.parse_args(argv)
    if args.matmul_precision:
        torch.set_float32_matmul_precision(args.matmul_precision)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32 matmul precision "
          f"{torch.get_float32_matmul_precision()}; cpu {pressure()}")
    rate = sgemm_rate()
    print(f"sgemm (2048^3 float32): {rate / 1e9:.1f} GFLOP/s")
    model, step, x = _train_step(args.model, args.size, args.width, args.batch)
    # _train_step's optimizer is private to its closure: rebuild the same step around a new one
    # so that the stage clock and the whole step drive the same optimizer state.
    optimizer = torch.optim.Adam(model.parameters(), lr=TRAIN.lr,
                                 fused=TRAIN.fused_optimizer or None)
    gen = torch.Generator().manual_seed(0)  # the labels _train_step draws after x
    torch.rand(args.batch, 1, args.size, args.size, generator=gen)
    y = torch.randint(0, 10, (args.batch,), generator=gen)
    device = x.device

    def whole() -> None:
        optimizer_step(model, model, optimizer, x, y)

    variants: dict[str, Callable[[], object]] = {"current": whole}
    if args.against:
        module = load_capsnet_at(args.against)
        ref, _, ref_step = reference_step(model, module, args.size, args.width, x, y)
        print_differences(ref, model, x, y, args.against)
        variants = {args.against: ref_step, "current": whole}
    for fn in variants.values():  # warm-up: allocator, kernels, Adam state
        time_step(fn, device, 3)

    best: dict[str, float] = {k: float("inf") for k in variants}
    for r in range(args.rounds):
        for name, fn in variants.items():
            t = min(time_step(fn, device, args.steps))
            best[name] = min(best[name], t)
            print(f"round {r + 1} {name:>10}: {t * 1e3:7.2f} ms/step (min of {args.steps}); "
                  f"cpu {pressure()}")
    flops_step = flops_per_image(args.model, args.size, args.width, train=True) * args.batch
    print(f"\nwhole step (optimizer_step), best of {args.rounds} rounds:")
    for name, t in best.items():
        print(f"  {name:>10}: {t * 1e3:7.2f} ms  {args.batch / t:7.1f} images/s  "
              f"{flops_step / t / 1e9:6.1f} GFLOP/s = {100 * flops_step / t / rate:4.1f} % of sgemm")
    if args.against:
        print(f"  speed-up current / {args.against}: {best[args.against] / best['current']:.3f}x")

    clock = StageClock(model, optimizer, x, y)
    for _ in range(2):
        clock.step()
    stage_runs = [clock.step() for _ in range(args.steps)]
    stages = {k: min(run[k] for run in stage_runs) for k in stage_runs[0]}
    median_total = sorted(sum(run.values()) for run in stage_runs)[len(stage_runs) // 2]
    flops = stage_flops(args.model, args.size, args.width, args.batch)
    print(f"\nstages (min over {args.steps} steps each; FLOPs as bench.flops counts them):")
    for k, t in stages.items():
        f = flops.get(k, 0.0)
        rate_s = f"{f / t / 1e9:6.1f} GFLOP/s" if f else "      -       "
        print(f"  {k:<52} {t * 1e3:7.2f} ms  {f / 1e6:8.1f} MFLOP  {rate_s}")
    print(f"  {'sum of the stage minima':<52} {sum(stages.values()) * 1e3:7.2f} ms; median of the "
          f"per-step sums {median_total * 1e3:.2f} ms; whole step {best['current'] * 1e3:.2f} ms")
    if clock.capsnet:
        caps = stages[FORWARD[1]] + stages[BACKWARD[1]]
        print(f"  capsule layer (forward + backward): {caps * 1e3:.2f} ms = "
              f"{100 * caps / sum(stages.values()):.1f} % of the step")

    prof_steps = args.profile_steps
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                record_shapes=True) as prof:
        for _ in range(prof_steps):
            whole()
    events = prof.key_averages(group_by_input_shape=True)
    total = sum(e.self_cpu_time_total for e in events) / 1e3 / prof_steps
    print(f"\ntorch.profiler: {total:.2f} ms of self CPU time per step (whole step unprofiled: "
          f"{best['current'] * 1e3:.2f} ms); per operator and input shapes, per step:")
    rows = sorted(events, key=lambda e: -e.self_cpu_time_total)[: args.row_limit]
    for e in rows:
        print(f"  {e.key[:34]:<34} {e.self_cpu_time_total / 1e3 / prof_steps:7.2f} ms "
              f"x{e.count // prof_steps:<3} {str(e.input_shapes)[:90]}")


if __name__ == "__main__":
    main()
