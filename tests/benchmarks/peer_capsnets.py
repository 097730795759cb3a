"""Full-size CapsNet training steps: ours against two public PyTorch re-implementations.

    python tests/benchmarks/peer_capsnets.py --gram PATH --guo PATH

PATH is a checkout of gram-ai/capsule-networks (``capsule_network.py``) and of
XifengGuo/CapsNet-Pytorch (``capsulenet.py``, ``capsulelayers.py``); nothing of theirs is copied
here. Their model classes are imported from those folders and adapted at call time only: their
code calls ``.cuda()`` on new tensors and wraps them in ``Variable``, so while one of their steps
runs ``torch.Tensor.cuda`` returns the tensor itself and ``Variable`` is the identity; gram-ai's
DigitCaps output gets a forward hook that only changes its memory layout (see ``gram_step``).

A step is forward, the model's own loss, backward and Adam (lr 1e-3) at 28x28, batch 32, float32
on the CPU: theirs as their training scripts run it (gram-ai: ``CapsuleLoss`` on the softmax of the
capsule lengths and one-hot labels; XifengGuo: ``caps_loss`` with ``lam_recon`` 0.392, their
default, 0.0005 x 784), ours as the trainer runs it (``tests/benchmarks/test_bench_models.py``:
width 1, fused Adam, channels-last). The three are alternated, ``--rounds`` rounds of ``--steps``
steps each; the best step of each model is reported, with images/s, the ratio of ours to the faster
peer, and the capsule layer's (DigitCaps + routing, forward and backward) share of our step, cut
by the stage clock of ``step_breakdown.py``. The paper's two convolutions alone (forward and
backward, NCHW as the peers run them) are timed last: no full-size step can be faster.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parents[1]), str(HERE)]  # this checkout's bench first

from step_breakdown import BACKWARD, FORWARD, StageClock, pressure, time_step  # noqa: E402
from test_bench_models import _train_step  # noqa: E402

BATCH, SIZE = 32, 28
GUO_LAM_RECON = 0.0005 * 784  # XifengGuo's default --lam_recon (capsulenet.py)


@contextlib.contextmanager
def cpu_only(*modules) -> Iterator[None]:
    """While inside: ``Tensor.cuda`` returns the tensor and each module's ``Variable`` is the
    identity (their code targets CUDA and pre-0.4 torch)."""
    cuda = torch.Tensor.cuda
    saved = [(m, getattr(m, "Variable", None)) for m in modules]
    torch.Tensor.cuda = lambda self, *a, **k: self
    for m, _ in saved:
        m.Variable = lambda t, *a, **k: t
    try:
        yield
    finally:
        torch.Tensor.cuda = cuda
        for m, v in saved:
            if v is None:
                del m.Variable
            else:
                m.Variable = v


def _import(folder: Path, name: str):
    sys.path.insert(0, str(folder))  # their modules import each other by plain name
    spec = importlib.util.spec_from_file_location(f"peer_{name}", folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(BATCH, 1, SIZE, SIZE, generator=gen), torch.randint(0, 10, (BATCH,), generator=gen)


def gram_step(folder: Path) -> Callable[[], None]:
    """gram-ai/capsule-networks: ``CapsuleNet`` and ``CapsuleLoss`` as its ``__main__`` trains."""
    m = _import(folder, "capsule_network")
    torch.manual_seed(0)
    model, loss_fn = m.CapsuleNet(), m.CapsuleLoss()
    # Their forward ends in ``(x * y[:, :, None]).view(...)`` on x = DigitCaps(.).squeeze()
    # .transpose(0, 1), which current torch refuses (the product keeps x's transposed strides).
    # The hook returns the same values laid out so that this transpose is contiguous.
    model.digit_capsules.register_forward_hook(
        lambda _mod, _inp, out: out.transpose(0, 1).contiguous().transpose(0, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = _inputs()
    onehot = torch.eye(10).index_select(0, y)

    def step() -> None:
        with cpu_only(m):
            classes, recon = model(x, onehot)
            loss = loss_fn(x, onehot, classes, recon)
            opt.zero_grad()
            loss.backward()
            opt.step()

    return step


def guo_step(folder: Path) -> Callable[[], None]:
    """XifengGuo/CapsNet-Pytorch: ``CapsuleNet([1, 28, 28], 10, 3)`` and ``caps_loss``."""
    layers = _import(folder, "capsulelayers")
    m = _import(folder, "capsulenet")
    torch.manual_seed(0)
    model = m.CapsuleNet(input_size=[1, SIZE, SIZE], classes=10, routings=3)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = _inputs()
    onehot = torch.zeros(BATCH, 10).scatter_(1, y.view(-1, 1), 1.0)

    def step() -> None:
        with cpu_only(m, layers):
            y_pred, x_recon = model(x, onehot)
            loss = m.caps_loss(onehot, y_pred, x, x_recon, GUO_LAM_RECON)
            opt.zero_grad()
            loss.backward()
            opt.step()

    return step


def conv_floor() -> Callable[[], None]:
    """Forward and backward of the paper's two convolutions alone (Conv1 1->256 9x9, PrimaryCaps
    256->256 9x9 stride 2), NCHW as both peers run them: a floor under any full-size step."""
    torch.manual_seed(0)
    conv1, primary = torch.nn.Conv2d(1, 256, 9), torch.nn.Conv2d(256, 256, 9, stride=2)
    x = _inputs()[0]

    def step() -> None:
        primary(torch.relu(conv1(x))).sum().backward()

    return step


def ours() -> tuple[Callable[[], None], Callable[[], StageClock]]:
    """Our step, and a stage clock on the same model (made after the timing: it wraps methods)."""
    model, step, x = _train_step("capsnet", SIZE, 1.0, BATCH)
    y = _inputs()[1]

    def clock() -> StageClock:
        opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
        return StageClock(model, opt, x, y)

    return step, clock


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gram", type=Path, required=True, help="checkout of gram-ai/capsule-networks")
    p.add_argument("--guo", type=Path, required=True, help="checkout of XifengGuo/CapsNet-Pytorch")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=3)
    args = p.parse_args(argv)

    our_step, make_clock = ours()
    steps = {"ours": our_step, "gram-ai": gram_step(args.gram), "XifengGuo": guo_step(args.guo)}
    cpu = torch.device("cpu")
    for fn in steps.values():
        time_step(fn, cpu, 2)  # warm-up
    best = {k: float("inf") for k in steps}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {BATCH} x {SIZE}x{SIZE}")
    for r in range(args.rounds):
        for name, fn in steps.items():
            t = min(time_step(fn, cpu, args.steps))
            best[name] = min(best[name], t)
            print(f"round {r + 1} {name:>9}: {t * 1e3:8.1f} ms/step; cpu {pressure()}")
    print(f"\nbest of {args.rounds} rounds x {args.steps} steps:")
    for name, t in best.items():
        print(f"  {name:>9}: {t * 1e3:8.1f} ms/step  {BATCH / t:6.1f} images/s")
    faster = min(("gram-ai", "XifengGuo"), key=best.__getitem__)
    print(f"  ours / faster peer ({faster}): {best[faster] / best['ours']:.2f}x")
    floor = min(time_step(conv_floor(), cpu, args.steps))
    print(f"  Conv1 + PrimaryCaps alone, forward + backward, NCHW: {floor * 1e3:.1f} ms; the faster "
          f"peer's step is {best[faster] / floor:.2f}x that")

    clock = make_clock()
    clock.step()
    runs = [clock.step() for _ in range(args.steps)]
    stages = {k: min(run[k] for run in runs) for k in runs[0]}
    caps = stages[FORWARD[1]] + stages[BACKWARD[1]]
    total = sum(stages.values())
    print(f"  our capsule layer (DigitCaps + routing, forward {stages[FORWARD[1]] * 1e3:.1f} ms + "
          f"backward {stages[BACKWARD[1]] * 1e3:.1f} ms): {100 * caps / total:.1f} % of the step "
          f"({total * 1e3:.1f} ms by the stage clock)")


if __name__ == "__main__":
    main()
