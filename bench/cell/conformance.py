"""The conformance check of a model: does it keep the interface of :mod:`bench.models.registry`?

``python -m bench models --check NAME`` runs it on any model; ``run`` runs it on every external
model of a profile before training and refuses one that fails (the suite's own models are covered
by the tests). Each property is checked the way the trainer and the evaluation use the model
(the same seeded build, training step, channels-last conversion, scoring and checkpoint format),
on real digits of the training split, on the CPU:

- ``build``: the factory builds at the profile's canvas and at 28x28 (both setups' sizes);
- ``shapes``: at both sizes, in training and eval mode, ``forward`` returns an
  :class:`~bench.models.registry.Output` with ``logits`` and ``scores`` ``(B, 10)``, scores in
  [0, 1], ``features`` ``(B, F)``, and a ``reconstruction`` that is None or ``(B, H*W)`` in [0, 1],
  all finite;
- ``determinism``: two builds under one seed have bitwise-equal weights and outputs, and two
  eval-mode calls give equal outputs;
- ``representation``: what the density score and the probe read (:func:`bench.cell.evaluate.predict`)
  has one finite row per image and is not the same for every image;
- ``loss``: ``loss(out, x, y)`` is a finite scalar whose gradient reaches the parameters;
- ``training``: :data:`TRAIN_STEPS` of the trainer's step on one batch lower the loss by at least
  :data:`MIN_DROP` (the same dropout draw before and after);
- ``parameters``: the classifier's parameters (without a ``decoder``) within the profile's
  ``[model] max_params`` when it sets one;
- ``serialisation``: the weights saved as the trainer saves them and loaded with
  ``weights_only=True`` into a model built under another seed give bitwise the same outputs.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from bench.cell.evaluate import predict
from bench.cell.plan import TrainSpec
from bench.cell.train import build_model, optimizer_step, weights_hash
from bench.config import Profile
from bench.data.canvas import place, to_float
from bench.data.mnist import load_split
from bench.models.registry import (
    NUM_CLASSES,
    Output,
    classifier_parameters,
    create_model,
    model_info,
)

__all__ = ["MIN_DROP", "PROPERTIES", "TRAIN_STEPS", "Finding", "check_model", "failures"]

PROPERTIES = ("build", "shapes", "determinism", "representation", "loss", "training", "parameters",
              "serialisation")
BATCH = 32  # our choice: digits of the one training batch, the first of the training split
TRAIN_STEPS = 20  # our choice: enough for every suite model to fit one batch at width 1/8
MIN_DROP = 0.10  # our choice: the loss after TRAIN_STEPS must be below 0.9 x the loss before
SEEDS = (0, 1)


@dataclass(frozen=True)
class Finding:
    """One property: whether it holds, and one line saying what was found."""

    prop: str
    ok: bool
    detail: str

    def line(self) -> str:
        return f"{'ok' if self.ok else 'FAIL':<5} {self.prop:<15} {self.detail}"


class _Fail(Exception):
    """A property does not hold; the message is the finding's one line."""


def _spec(name: str, profile: Profile, size: int, seed: int) -> TrainSpec:
    return TrainSpec(name, BATCH, seed, canvas=size, width=profile.model.width,
                     train=profile.train, recon_weight=profile.model.recon_weight)


def _shape(t: Any) -> str:
    return str(tuple(t.shape)) if isinstance(t, torch.Tensor) else type(t).__name__


def _check_output(out: Any, b: int, size: int, where: str) -> int:
    """The feature width F; raises :class:`_Fail` naming the first broken field."""
    if not isinstance(out, Output):
        raise _Fail(f"{where}: forward returned {type(out).__name__}, expected "
                    "bench.models.Output")
    for field in ("logits", "scores"):
        t = getattr(out, field)
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != (b, NUM_CLASSES):
            raise _Fail(f"{where}: Output.{field} has shape {_shape(t)}, expected ({b}, {NUM_CLASSES})")
    f = out.features
    if not isinstance(f, torch.Tensor) or f.dim() != 2 or f.shape[0] != b or f.shape[1] < 1:
        raise _Fail(f"{where}: Output.features has shape {_shape(f)}, expected ({b}, F)")
    r = out.reconstruction
    if r is not None and (not isinstance(r, torch.Tensor) or tuple(r.shape) != (b, size * size)):
        raise _Fail(f"{where}: Output.reconstruction has shape {_shape(r)}, expected None or "
                    f"({b}, {size * size})")
    for field in ("logits", "scores", "features", "reconstruction"):
        t = getattr(out, field)
        if t is not None and not torch.isfinite(t.float()).all():
            raise _Fail(f"{where}: Output.{field} is not finite")
    for field in ("scores", "reconstruction"):
        t = getattr(out, field)
        if t is not None and (t.min() < 0 or t.max() > 1):
            raise _Fail(f"{where}: Output.{field} leaves [0, 1] "
                        f"(min {t.min().item():.3g}, max {t.max().item():.3g})")
    return int(f.shape[1])


def _outputs_equal(a: Output, b: Output) -> bool:
    return all((x is None and y is None) or (x is not None and y is not None and torch.equal(x, y))
               for x, y in zip(a, b, strict=True))


def _loss_at(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """The training-mode loss of the batch under one fixed random draw (dropout)."""
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(0)
        return float(model.loss(model(x, y), x, y))


class _Checker:
    def __init__(self, name: str, profile: Profile, data_dir: str | None, steps: int):
        self.name, self.profile, self.steps = name, profile, steps
        self.canvas = profile.data.canvas
        self.sizes = tuple(dict.fromkeys((self.canvas, 28)))
        images, labels = load_split("train", profile.data.dataset, data_dir)
        self.digits, self.y = images[:BATCH], labels[:BATCH]
        self.trained: nn.Module | None = None

    def x(self, size: int, channels_last: bool = False) -> torch.Tensor:
        x = to_float(place(self.digits, size))
        return x.contiguous(memory_format=torch.channels_last) if channels_last else x

    def build(self, size: int, seed: int = SEEDS[0]) -> nn.Module:
        return build_model(_spec(self.name, self.profile, size, seed))

    def prop_build(self) -> str:
        info = model_info(self.name)
        for size in self.sizes:
            model = self.build(size)
            if not isinstance(model, nn.Module):
                raise _Fail(f"the factory returned {type(model).__name__} at {size}x{size}, "
                            "expected a torch.nn.Module")
            if not callable(getattr(model, "loss", None)):
                raise _Fail("the model has no loss(out, x, y) method")
        return (f"{' and '.join(f'{s}x{s}' for s in self.sizes)} at width "
                f"{self.profile.model.width:g}; family {info.family}")

    def prop_shapes(self) -> str:
        parts = []
        for size in self.sizes:
            model = self.build(size)
            x, b = self.x(size)[:4], 4
            model.train()
            _check_output(model(x, self.y[:b]), b, size, f"{size}x{size}, training mode")
            model.eval()
            with torch.no_grad():
                out = model(x)
            f = _check_output(out, b, size, f"{size}x{size}, eval mode")
            recon = "none" if out.reconstruction is None else f"(B, {size * size})"
            parts.append(f"{size}x{size}: logits (B, 10), features (B, {f}), reconstruction {recon}")
        return "; ".join(parts)

    def prop_determinism(self) -> str:
        a, b = self.build(self.canvas), self.build(self.canvas)
        if weights_hash(a) != weights_hash(b):
            sa, sb = a.state_dict(), b.state_dict()
            bad = [k for k in sa if k not in sb or not torch.equal(sa[k], sb[k])]
            raise _Fail(f"two builds under seed {SEEDS[0]} differ in {len(bad)} of {len(sa)} "
                        f"tensors (first: '{bad[0] if bad else '?'}'): draw every initial weight "
                        "from torch's global generator")
        x = self.x(self.canvas)[:8]
        a.eval()
        b.eval()
        with torch.no_grad():
            first, again, other = a(x), a(x), b(x)
        if not _outputs_equal(first, again):
            raise _Fail("two eval-mode calls on the same images give different outputs")
        if not _outputs_equal(first, other):
            raise _Fail(f"two builds under seed {SEEDS[0]} give different eval-mode outputs")
        return f"seed {SEEDS[0]} twice: bitwise-equal weights and outputs"

    def prop_representation(self) -> str:
        model = self.build(self.canvas)
        preds = predict(model, place(self.digits, self.canvas), torch.device("cpu"), batch_size=16)
        rep = preds.representation
        source = "digit_capsules" if preds.rep is not None else "Output.features"
        if rep.dim() != 2 or rep.shape[0] != BATCH:
            raise _Fail(f"{source} gives {tuple(rep.shape)}, expected ({BATCH}, D) over "
                        f"{BATCH} images")
        if not torch.isfinite(rep).all():
            raise _Fail(f"{source} is not finite")
        if not (rep.std(dim=0) > 0).any():
            raise _Fail(f"{source} is the same for every image: the density score and the probe "
                        "would read nothing")
        return f"the density score and the probe read {source}: ({BATCH}, {rep.shape[1]})"

    def prop_loss(self) -> str:
        model = self.build(self.canvas)
        model.train()
        x, y = self.x(self.canvas), self.y
        loss = model.loss(model(x, y), x, y)
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            raise _Fail(f"loss(out, x, y) returned {_shape(loss)}, expected a scalar tensor")
        if not torch.isfinite(loss.detach()).all():
            raise _Fail(f"the loss is not finite ({loss.item()})")
        if not loss.requires_grad:
            raise _Fail("the loss does not depend on any parameter (no gradient)")
        loss.backward()
        params = [p for p in model.parameters() if p.requires_grad]
        grads = [p.grad for p in params if p.grad is not None]
        if any(not torch.isfinite(g).all() for g in grads):
            raise _Fail("the loss's gradient is not finite")
        if not any(g.abs().sum() > 0 for g in grads):
            raise _Fail("the loss's gradient is zero for every parameter")
        return (f"{loss.item():.4g} on a batch of {BATCH}; gradient reaches {len(grads)} of "
                f"{len(params)} parameter tensors")

    def prop_training(self) -> str:
        cfg = self.profile.train
        model = self.build(self.canvas)
        if cfg.channels_last:
            model = model.to(memory_format=torch.channels_last)
        x, y = self.x(self.canvas, cfg.channels_last), self.y
        model.train()
        before = _loss_at(model, x, y)
        lr = cfg.lr_for(self.name)
        optimizer = torch.optim.Adam(model.parameters(), lr=lr, fused=cfg.fused_optimizer or None)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(SEEDS[0])
            for _ in range(self.steps):
                optimizer_step(model, model, optimizer, x, y)
        after = _loss_at(model, x, y)
        self.trained = model
        if not math.isfinite(after) or not after < (1 - MIN_DROP) * before:
            raise _Fail(f"{self.steps} Adam steps (lr {lr:g}) on one batch of {BATCH} took the "
                        f"loss from {before:.4g} to {after:.4g}, not below {1 - MIN_DROP:g} x "
                        "the start")
        return f"{self.steps} steps on one batch: loss {before:.4g} -> {after:.4g}"

    def prop_parameters(self) -> str:
        with torch.device("meta"):
            model = create_model(self.name, input_size=self.canvas, width=self.profile.model.width)
            ref = classifier_parameters(create_model("capsnet", input_size=self.canvas,
                                                     width=self.profile.model.width))
        count = classifier_parameters(model)
        budget = self.profile.model.max_params
        where = f"{count:,} without a decoder (capsnet's classifier: {ref:,})"
        if budget and count > budget:
            raise _Fail(f"{where}: over the profile's [model] max_params = {budget:,}")
        return where + (f", within max_params {budget:,}" if budget else "; the profile sets no "
                        "[model] max_params")

    def prop_serialisation(self) -> str:
        cfg = self.profile.train
        source = self.trained or self.build(self.canvas)
        buf = io.BytesIO()
        torch.save({k: v.detach().to("cpu", copy=True) for k, v in source.state_dict().items()}, buf)
        buf.seek(0)
        try:
            state = torch.load(buf, weights_only=True)
        except Exception as e:  # whatever torch's safe unpickler refuses
            raise _Fail(f"the state dict does not load with weights_only=True ({type(e).__name__})") \
                from None
        copy = self.build(self.canvas, seed=SEEDS[1])
        copy.load_state_dict(state)
        if cfg.channels_last:
            copy = copy.to(memory_format=torch.channels_last)
        x = self.x(self.canvas, cfg.channels_last)[:8]
        source.eval()
        copy.eval()
        with torch.no_grad():
            if not _outputs_equal(source(x), copy(x)):
                raise _Fail("a model loaded from the saved weights gives different outputs: "
                            "some state is outside state_dict()")
        return f"{len(state)} tensors saved and loaded (weights_only); equal outputs"


def check_model(name: str, profile: Profile, data_dir: str | None = None,
                steps: int = TRAIN_STEPS) -> list[Finding]:
    """Every property of :data:`PROPERTIES` for model ``name`` at the profile's width and canvas;
    after a failed ``build`` the rest are not run."""
    checker = _Checker(name, profile, data_dir, steps)
    found: list[Finding] = []
    for prop in PROPERTIES:
        if found and not found[0].ok:
            found.append(Finding(prop, False, "not checked: the model does not build"))
            continue
        method: Callable[[], str] = getattr(checker, f"prop_{prop}")
        try:
            found.append(Finding(prop, True, method()))
        except _Fail as e:
            found.append(Finding(prop, False, str(e)))
        except Exception as e:  # the model's own code raised: its first line is the finding
            text = str(e).strip().splitlines()[0] if str(e).strip() else ""
            found.append(Finding(prop, False, f"raised {type(e).__name__}: {text}"))
    return found


def failures(found: list[Finding]) -> list[Finding]:
    """The properties that do not hold (a skipped one counts only through what skipped it)."""
    return [f for f in found if not f.ok and not f.detail.startswith("not checked")]
