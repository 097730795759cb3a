"""The published numbers each scoreboard row is read against: one registry, with source and
conditions, shown in the scoreboard's "Published" column.

Only figures printed in the cited papers are listed; where a paper states a direction without
a number that this project has checked, the entry says so instead of inventing one. A row is
comparable with its published figure only where the conditions agree; the scoreboard shows the
conditions beside the number so that the reader can see how far apart they are (model size,
training budget, test set).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Published:
    """One published figure: what was measured, the number(s), where and under what conditions."""

    claim: str  # the scoreboard key it is read against ("C1", ...; "MNIST" for the MNIST table)
    source: str  # authors, year, section or table
    figure: str  # the number(s) as printed
    conditions: str  # model size, training data and budget, test set

    def text(self) -> str:
        return f"{self.figure} ({self.source}; {self.conditions})"


REGISTRY: tuple[Published, ...] = (
    Published(
        "C1", "Sabour et al. 2017, Sec. 5.2",
        "affNIST 79 % (CapsNet) vs 66 % (ConvNet), +13 pp",
        "full-size models trained on expanded (translated) MNIST to 99.23 % vs 99.22 % test "
        "accuracy; the official affNIST test set"),
    Published(
        "C2", "Sabour et al. 2017",
        "no number published",
        "the paper states no data-efficiency figure; later work argues it from the parameter "
        "count"),
    Published(
        "C3", "Sabour et al. 2017, Sec. 1",
        "no number published",
        "the part-whole argument is stated, not measured, in the paper"),
    Published(
        "C4", "Gu, Tresp & Hu 2021 (CVPR), ablations",
        "direction only: squash, margin loss and class-conditional reconstruction help "
        "robustness (numbers not checked here)",
        "their CapsNet ablations on affNIST; the capsule layer's removal here also drops those "
        "components"),
    Published(
        "C5", "Gu & Tresp 2020",
        "routing helps neither generalisation nor affine robustness; Aff-CapsNets from 79 to "
        "93.21 % affNIST",
        "full-size CapsNets, official affNIST"),
    Published(
        "C6", "Gu, Tresp & Hu 2021 (CVPR)",
        "a ConvNet with 9x9 kernels and average pooling is more robust than the CapsNet on "
        "affNIST (numbers not checked here)",
        "their final 'simple ConvNet', about 5.3M parameters, official affNIST"),
    Published(
        "C7", "Hinton, Sabour & Frosst 2018 (ICLR); Gu, Wu & Tresp 2021 (ICLR)",
        "direction disputed: EM-routing capsules less fooled than a baseline ConvNet by "
        "white-box FGSM on smallNORB; a vote attack brings dynamic-routing CapsNets down "
        "further than standard attacks (numbers not checked here)",
        "other models, data sets and attacks than this row's"),
    Published(
        "C8", "Sabour et al. 2017, Sec. 6",
        "5.2 % MultiMNIST error for the CapsNet, below their baseline ConvNet's",
        "both trained on MultiMNIST (here: single digits only); 36x36, shifts up to 4 px"),
    Published(
        "MNIST", "Sabour et al. 2017, Table 1",
        "0.25 ± 0.005 % test error (3 routing iterations, reconstruction); baseline ConvNet "
        "0.39 %",
        "full-size models, 28x28 MNIST shifted by up to 2 px, the released budget"),
    Published(
        "MNIST", "Mazzia et al. 2021 (Efficient-CapsNet)",
        "0.26 % mean single-model test error with 161,824 parameters",
        "28x28 MNIST, their training schedule"),
)


def for_claim(key: str) -> list[Published]:
    """The registry's entries for scoreboard key ``key``."""
    return [p for p in REGISTRY if p.claim == key]


def published_text(key: str) -> str:
    """The "Published" cell of a scoreboard row: every entry's text, or an em dash."""
    entries = for_claim(key)
    return "; ".join(p.text() for p in entries) if entries else "—"
