"""Adversarial test sets, made per cell: white-box L-infinity attacks on the first clean test digits.

Convention
----------
- Images are the models' input: float ``(B, 1, C, C)`` in [0, 1] (:func:`bench.data.canvas.to_float`
  of the clean set's uint8 digits). A budget ``eps`` is the L-infinity radius in that range
  (0.1 = 25.5 grey levels); every attacked image stays in [0, 1].
- Attacked loss: softmax cross-entropy on the model's ``logits`` (for the capsule models the
  class-capsule lengths in [0, 1] used as logits, which mostly shrinks the true capsule rather
  than raising the strongest rival: a weaker objective than a margin on the ConvNets' unnormalised
  scores, so the two families face objectives of different strength). Our choice:
  the margin loss (Sabour et al. 2017, Eq. 4) is zero, and so is its gradient, once the true class's
  length is above 0.9 and every other below 0.1, so a gradient attack on it stalls on confident
  digits; that is a masked gradient of the loss, not robustness. The reconstruction term is not in
  the attacked loss: the decoder does not feed the class scores (at test time it reconstructs from
  the longest capsule, Sec. 4.1).
- Each attack is seeded by :func:`bench.io.derive_seed` of the cell and the set's name.

Sets (names from :func:`adversarial_name`, kinds in :mod:`bench.data.testsets`, family
``"adversarial"``):

- ``fgsm-<eps>``: one signed-gradient step of size eps (Goodfellow, Shlens & Szegedy, ICLR 2015).
- ``pgd-<eps>``: projected gradient descent from a uniformly random start in the eps-ball, ``steps``
  steps of 2.5 eps / steps (Madry et al., ICLR 2018, Sec. 5 and Appendix A; the step rule is theirs
  for MNIST: 100 steps of 0.01 at 0.3).
- ``pgd-votes-<eps>`` (models with dynamic routing): PGD on the same weights with one routing
  iteration (r = 1: the class capsules squash the sum of the votes with c_ij = 1/10), scored on
  the model as trained (r = 3): a surrogate attack in the spirit of the vote attack of Gu, Wu &
  Tresp (ICLR 2021: attack the votes, bypassing routing), not their method or code.
- ``square-<eps>``: Square Attack (Andriushchenko et al., ECCV 2020), gradient-free (queries to the
  scores only), at the stated budget on the first ``square_n`` digits.
- ``transfer-<eps>``: the PGD images made on another model of the run, scored on this one (a
  black-box attack; :func:`transfer_rows`, run after every cell of the run is evaluated).

The attacks are the Adversarial Robustness Toolbox's (ART, https://github.com/Trusted-AI/
adversarial-robustness-toolbox): our choice over torchattacks because ART is maintained (releases
in 2025), takes the model's loss as an argument, has FGSM, PGD, Square and AutoAttack, and its
requirements do not pin other packages (torchattacks 3.5.1 requires ``requests~=2.25.1``).
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from bench.config import AttackConfig
from bench.data.testsets import adversarial_name
from bench.io import derive_seed

# Run-level files of the adversarial sets, written after the cells
# (bench.runner.stages.stage_transfer) and read by the report (bench.report.adversarial).
TRANSFER_FILE = "transfer.csv"
EXAMPLES_FILE = "adversarial_examples.pt"
N_EXAMPLES = 8


class _Logits(nn.Module):
    """A benchmark model as the attack library sees it: images -> ``logits`` (B, 10)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # + 0 * x: a model whose output does not depend differentiably on x (a hard threshold
        # in front) gives the attack a zero gradient instead of none, which ART refuses; the
        # attack then fails as such a model makes it fail, and the masking checks flag it.
        return self.model(x).logits + 0.0 * x.flatten(1).sum(1, keepdim=True)


def routes(model: nn.Module) -> bool:
    """Whether ``model`` has a dynamic-routing layer with more than one iteration (an
    ``iterations`` attribute, as :class:`bench.models.capsnet.CapsNet`)."""
    return any(int(getattr(m, "iterations", 1) or 1) > 1 for m in model.modules())


def vote_model(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every routing layer at one iteration (uniform coupling: the class
    capsules squash the votes' sum with c_ij = 1/10, Sabour et al. 2017, Procedure 1 with r = 1)."""
    votes = copy.deepcopy(model)
    for m in votes.modules():
        if int(getattr(m, "iterations", 1) or 1) > 1:
            m.iterations = 1
    return votes.eval()


def _classifier(model: nn.Module, canvas: int, device: torch.device):
    from art.estimators.classification import PyTorchClassifier

    return PyTorchClassifier(
        model=_Logits(model).eval(), loss=nn.CrossEntropyLoss(), input_shape=(1, canvas, canvas),
        nb_classes=10, clip_values=(0.0, 1.0),
        device_type="gpu" if device.type == "cuda" else "cpu")


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """NumPy's and torch's global generators seeded inside the block (ART draws its random starts
    and squares from NumPy's), their states restored after."""
    state, torch_state = np.random.get_state(), torch.random.get_rng_state()
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)
        torch.random.set_rng_state(torch_state)


@dataclass
class AttackedSet:
    """Attacked images of one set: float ``(N, 1, C, C)`` in [0, 1], the digits' rows ``source``
    in the clean set, and the set's budget."""

    name: str
    attack: str
    eps: float
    images: torch.Tensor
    rows: torch.Tensor  # rows of the clean set (the first N digits)


def attack_sets(model: nn.Module, clean: torch.Tensor, labels: torch.Tensor, cfg: AttackConfig,
                seed_key: str, device: torch.device, batch_size: int = 128) -> list[AttackedSet]:
    """Every white-box and gradient-free set of ``cfg`` against ``model`` (eval mode).

    Args:
        clean: uint8 ``(N, C, C)`` clean digits; the first ``cfg.n`` are attacked.
        labels: their classes ``(N,)``.
        seed_key: the cell's identity (its label), which seeds each attack with the set's name.
    """
    from art.attacks.evasion import (
        FastGradientMethod,
        ProjectedGradientDescent,
        SquareAttack,
    )

    n = min(cfg.n, clean.shape[0])
    canvas = int(clean.shape[-1])
    x = clean[:n].unsqueeze(1).float().div(255.0).numpy()
    y = np.eye(10, dtype=np.float32)[labels[:n].numpy()]
    model = model.eval()
    white = _classifier(model, canvas, device)
    votes = _classifier(vote_model(model), canvas, device) if cfg.votes and routes(model) else None
    out: list[AttackedSet] = []

    def run(attack: str, eps: float, make, rows: int) -> None:
        name = adversarial_name(attack, eps)
        with _seeded(derive_seed(seed_key, name)), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ART's notes on the estimator's settings
            adv = make().generate(x=x[:rows], y=y[:rows])
        images = torch.from_numpy(np.clip(adv, 0.0, 1.0)).float()
        out.append(AttackedSet(name, attack, eps, images, torch.arange(rows)))

    for eps in cfg.budgets:
        run("fgsm", eps, lambda eps=eps: FastGradientMethod(
            white, norm=np.inf, eps=eps, batch_size=batch_size), n)
        step = 2.5 * eps / cfg.pgd_steps
        run("pgd", eps, lambda eps=eps, step=step: ProjectedGradientDescent(
            white, norm=np.inf, eps=eps, eps_step=step, max_iter=cfg.pgd_steps,
            num_random_init=1, batch_size=batch_size, verbose=False), n)
        if votes is not None and eps == cfg.stated_budget:
            run("pgd-votes", eps, lambda eps=eps, step=step: ProjectedGradientDescent(
                votes, norm=np.inf, eps=eps, eps_step=step, max_iter=cfg.pgd_steps,
                num_random_init=1, batch_size=batch_size, verbose=False), n)
    if cfg.square_n > 0:
        eps = cfg.stated_budget
        run("square", eps, lambda: SquareAttack(
            white, norm=np.inf, eps=eps, max_iter=cfg.square_queries, nb_restarts=1,
            batch_size=batch_size, verbose=False), min(cfg.square_n, n))
    return out


def kept_pgd(examples: dict[str, torch.Tensor], eps: float
             ) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The PGD images at ``eps`` a cell kept in its ``examples.pt`` and their labels, or None."""
    name = adversarial_name("pgd", eps)
    images = examples.get(f"adversarial/{name}")
    labels = examples.get(f"adversarial-labels/{name}")
    if images is None or labels is None:
        return None
    return images.float(), labels.long()


def transfer_correct(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                     device: torch.device, batch_size: int = 256) -> np.ndarray:
    """Per image, whether ``model`` classifies another model's attacked ``images`` correctly."""
    model = model.eval()
    out = []
    with torch.inference_mode():
        for i in range(0, images.shape[0], batch_size):
            scores = model(images[i:i + batch_size].to(device)).scores
            out.append((scores.argmax(1).cpu() == labels[i:i + batch_size]).numpy())
    return np.concatenate(out) if out else np.zeros(0, dtype=bool)
