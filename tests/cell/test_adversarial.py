"""The adversarial sets (bench.cell.adversarial) and the gradient-masking checks
(bench.metrics.masking_checks), against oracles that are not the code under test: a linear
model trained here, whose FGSM step is the exact worst case of the L-infinity ball for a
two-class margin; a model whose gradient is zero by construction; hand-worked check numbers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from bench.cell import adversarial
from bench.config import AttackConfig
from bench.data.canvas import place
from bench.data.mnist import load_split
from bench.data.testsets import adversarial_name, set_kind
from bench.metrics import masking_checks
from bench.models.capsnet import CapsNet
from bench.models.registry import Output


class Linear(nn.Module):
    """Softmax regression on the raw pixels, returning the benchmark models' Output."""

    def __init__(self, side: int = 40, threshold: bool = False):
        super().__init__()
        self.fc = nn.Linear(side * side, 10)
        self.threshold = threshold

    def forward(self, x: torch.Tensor) -> Output:
        if self.threshold:  # a hard threshold: zero gradient almost everywhere
            x = (x > 0.5).float()
        z = self.fc(x.flatten(1))
        return Output(z, torch.softmax(z, 1), z, None)


@pytest.fixture(scope="module")
def digits():
    images, labels = load_split("train", "mnist", None, False)
    canvases = place(images[:1200], 40)
    return canvases, labels[:1200]


@pytest.fixture(scope="module")
def trained(digits):
    torch.manual_seed(0)
    canvases, labels = digits
    model = Linear()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x = canvases[:1000].unsqueeze(1).float() / 255
    for _ in range(150):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x).logits, labels[:1000]).backward()
        opt.step()
    return model.eval()


def _accuracy(model, images, labels) -> float:
    with torch.no_grad():
        return float((model(images).scores.argmax(1) == labels).float().mean())


CFG = AttackConfig(n=100, budgets=(0.05, 0.1, 0.3), stated_budget=0.05, pgd_steps=20,
                   square_n=50, square_queries=200)


@pytest.fixture(scope="module")
def attacked(trained, digits):
    canvases, labels = digits
    test, test_labels = canvases[1000:1100], labels[1000:1100]
    sets = adversarial.attack_sets(trained, test, test_labels, CFG, "test", torch.device("cpu"))
    return {s.name: s for s in sets}, test, test_labels


def test_attacks_lower_accuracy_and_pgd_is_at_least_as_strong_as_fgsm(trained, attacked):
    sets, test, labels = attacked
    clean = _accuracy(trained, test.unsqueeze(1).float() / 255, labels)
    assert clean > 0.8  # softmax regression on MNIST
    for eps in CFG.budgets:
        fgsm = sets[adversarial_name("fgsm", eps)]
        pgd = sets[adversarial_name("pgd", eps)]
        a_fgsm = _accuracy(trained, fgsm.images, labels)
        a_pgd = _accuracy(trained, pgd.images, labels)
        assert a_fgsm < clean and a_pgd <= a_fgsm + 0.02, (eps, clean, a_fgsm, a_pgd)
        # the budget is respected and the images stay in [0, 1]
        base = test.unsqueeze(1).float() / 255
        assert float((pgd.images - base).abs().max()) <= eps + 1e-6
        assert float(pgd.images.min()) >= 0.0 and float(pgd.images.max()) <= 1.0
    assert _accuracy(trained, sets[adversarial_name("pgd", 0.3)].images, labels) < 0.05


def test_attacks_are_reproducible(trained, attacked):
    sets, test, labels = attacked
    again = adversarial.attack_sets(trained, test, labels, CFG, "test", torch.device("cpu"))
    for s in again:
        assert torch.equal(s.images, sets[s.name].images), s.name


def test_a_hard_threshold_in_front_is_flagged(trained, digits):
    canvases, labels = digits
    masked = Linear(threshold=True)
    masked.fc.load_state_dict(trained.fc.state_dict())
    masked.eval()
    test, test_labels = canvases[1000:1100], labels[1000:1100]
    sets = {s.name: s for s in adversarial.attack_sets(masked, test, test_labels, CFG, "m",
                                                       torch.device("cpu"))}

    def acc(attack: str, eps: float, rows: int = 100) -> float:
        s = sets[adversarial_name(attack, eps)]
        return _accuracy(masked, s.images[:rows], test_labels[:rows])

    pgd = {e: acc("pgd", e) for e in CFG.budgets}
    fgsm = {e: acc("fgsm", e) for e in CFG.budgets}
    results = masking_checks(pgd, fgsm, 0.05, square=acc("square", 0.05, 50),
                             pgd_on_square_digits=acc("pgd", 0.05, 50))
    failed = {name for name, passed, _ in results if passed is False}
    # no gradient: PGD cannot bring a thresholded image below its clean accuracy at 0.3
    assert "near 0 at the largest budget (≤ 10 %)" in failed, results


def test_masking_checks_by_hand():
    pgd = {0.05: 0.40, 0.1: 0.10, 0.3: 0.00}
    fgsm = {0.05: 0.50, 0.1: 0.30, 0.3: 0.05}
    ok = masking_checks(pgd, fgsm, 0.05, transfer=0.70, square=0.45, pgd_on_square_digits=0.42,
                        votes=0.41)
    assert all(passed for _, passed, _ in ok), ok
    bad = masking_checks({0.05: 0.40, 0.1: 0.50, 0.3: 0.30}, {0.05: 0.30, 0.1: 0.6, 0.3: 0.2},
                         0.05, transfer=0.20, square=0.10, pgd_on_square_digits=0.40,
                         votes=0.10)
    verdict = {name: passed for name, passed, _ in bad}
    assert verdict == {
        "PGD at least as strong as FGSM": False,  # 0.40 > 0.30 + 0.03 at 0.05
        "accuracy falls with the budget": False,  # 0.40 -> 0.50
        "near 0 at the largest budget (≤ 10 %)": False,  # 0.30
        "transfer attack not stronger than white-box": False,  # 0.20 < 0.40 - 0.03
        "gradient-free (Square) not stronger than PGD": False,  # 0.10 < 0.40 - 0.03
        "vote attack not stronger than PGD": False,  # 0.10 < 0.40 - 0.03
    }
    # within the tolerance passes; no data is "not measured" (None); no votes: no row
    edge = masking_checks({0.1: 0.12}, {0.1: 0.10}, 0.1)
    names = {name: passed for name, passed, _ in edge}
    assert names["PGD at least as strong as FGSM"] is True
    assert names["accuracy falls with the budget"] is None
    assert names["transfer attack not stronger than white-box"] is None
    assert "vote attack not stronger than PGD" not in names


def test_vote_model_bypasses_routing_without_touching_the_model():
    torch.manual_seed(0)
    model = CapsNet(input_size=28, width=0.125, iterations=3, reconstruction=False).eval()
    votes = adversarial.vote_model(model)
    assert model.iterations == 3 and votes.iterations == 1
    assert adversarial.routes(model) and not adversarial.routes(votes)
    assert not adversarial.routes(Linear())
    # one iteration is the uniform coupling c_ij = 1/10 (Procedure 1, r = 1): the lengths are
    # those of squash(sum_i u_hat_j|i / 10), computed here by hand from the votes
    x = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        for m in (model, votes):
            m.W.mul_(30.0)  # votes large enough for routing to move the lengths
        u_hat = model.predictions(model.primary_capsules(x))  # (B, J, I, D)
        s_j = u_hat.sum(dim=2) / 10
        norm2 = (s_j ** 2).sum(-1, keepdim=True)
        v = norm2 / (1 + norm2) * s_j / norm2.sqrt()
        assert torch.allclose(votes(x).logits, v.norm(dim=-1), rtol=1e-4, atol=1e-7)
        assert not torch.allclose(model(x).logits, v.norm(dim=-1), rtol=1e-2, atol=0)


def test_adversarial_set_names_round_trip():
    for attack in ("fgsm", "pgd", "pgd-votes", "square", "transfer"):
        for eps in (0.05, 0.1, 0.3):
            kind = set_kind(adversarial_name(attack, eps))
            assert (kind.family, kind.factor, kind.budget) == ("adversarial", attack, eps)
    with pytest.raises(Exception, match="unknown attack"):
        adversarial_name("cw", 0.1)


def test_attack_config_is_checked(tmp_path):
    from bench.config import load_profile
    from bench.errors import BenchError

    bad = tmp_path / "p.toml"
    bad.write_text('models = ["capsnet"]\n[data.attack]\nn = 10\nbudgets = [0.1]\n'
                   'stated_budget = 0.2\n')
    with pytest.raises(BenchError, match="stated_budget"):
        load_profile(str(bad))
    bad.write_text('models = ["capsnet"]\n[data.attack]\nn = 10\nbudgets = [1.5]\n')
    with pytest.raises(BenchError, match="budgets"):
        load_profile(str(bad))


def test_unattacked_by_default():
    assert AttackConfig().n == 0
    assert np.isclose(2.5 * 0.3 / 40, 0.01875)  # Madry et al.'s rule at 40 steps
