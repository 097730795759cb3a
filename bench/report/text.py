"""The report's fixed prose: interval notes, how to read it, table names and figure captions."""

from __future__ import annotations

from bench.report import ablation as ablation_report
from bench.report import adversarial as adversarial_report
from bench.report import routing as routing_report
from bench.report.read import REFERENCE
from bench.report.readout import ALL_EQUAL, CLIPPED, MINUS

NOTE_MEAN = (f"Intervals: mean over seeds [95% Student-t interval of the mean], clipped to the "
             f"metric's range ([0, 100]% for accuracies); {CLIPPED}: clipped (the t approximation "
             "is poor near a bound); one seed: the value alone, no interval.")
NOTE_DIFF = (f"Differences: model {MINUS} {REFERENCE} per seed on the seeds both share, mean "
             "[95% paired Student-t interval]; an interval that contains 0 is no evidence of a "
             "difference.")


# --------------------------------------------------------------------------------------------
# The report


_HOW_TO_READ = f"""\
## How to read this report

- **The claim.** Sabour, Frosst & Hinton (2017, Sec. 5.2) trained a CapsNet and a traditional
  ConvNet on MNIST digits randomly shifted on a 40x40 canvas; at the same clean accuracy
  (99.23% vs 99.22%) the CapsNet reached 79% on affNIST and the ConvNet 66%.
- **The counter-claim.** Gu, Tresp & Hu (CVPR 2021) ablated CapsNet's components and report that
  dynamic routing and the transformation process do not help robustness to affine transforms,
  and that ConvNets given CapsNet's other components can be more robust than CapsNet.
  {{counter}}
- **What is compared here.** The scoreboard and the matched-accuracy table compare models at
  the same clean accuracy, as the paper does; the headline tables compare them at the largest
  n, whatever their clean accuracy; the data-efficiency table and figures compare them across
  training-set sizes. affNIST-style (test set `affnist` in `metrics.csv`) is our set
  regenerated from MNIST test digits with affNIST-like ranges (`affnist-real` is the official
  set, when given). The sweeps vary one factor at a time; their accuracies count only the
  digits whose ink stays on the 40x40 canvas, and the sweep table gives the fraction cropped.
  On scrambled digits, "accuracy" is how often
  the scrambled digit still gets its original class, whether or not the intact digit was
  right; the part-arrangement table conditions it on the intact digit being classified
  correctly ("kept if intact correct"), so a weaker model does not look more part-aware.
- **Uncertainty.** Seeds are the unit of replication. Means carry a 95% Student-t interval over
  seeds, clipped to the metric's range ({CLIPPED} marks a clipped interval); comparisons with
  {REFERENCE} are paired by seed; training-set sizes and their ratios get intervals on the log
  scale. Figure bands are the same intervals as the tables, with each seed drawn as a point.
  With few seeds the intervals are wide: an interval that contains no effect (0, or 1 for a
  ratio) is no evidence of a difference. The tables' intervals are over seeds for FIXED test
  digits: the sampling of the test digits is not in them; the scoreboard's estimate column adds
  it where the run has the per-image store (its notes say for which claims). An interval of
  zero width means that every seed gave the same value; it is printed "{ALL_EQUAL}" rather than
  "[x, x]". The error of interpolating between training-set sizes (the accuracy read at c*, the
  n to reach a target) is not in the intervals either.
"""

COUNTER_GU = "The scoreboard reads it (C6) on their ConvNet, `convnet-gu`."
COUNTER_NO_GU = ("This run does not train their ConvNet (`convnet-gu`), so the scoreboard does "
                 "not read it.")
COUNTER_K9 = ("`convnet-k9` (C4) is the CapsNet's own 9x9 trunk with a fully connected head, an "
              "ablation of the capsule layer that their account predicts to lose.")


def how_to_read(models: set[str]) -> str:
    """The reading guide, naming the counter-claim's models only where the run has them."""
    counter = COUNTER_GU if "convnet-gu" in models else COUNTER_NO_GU
    if "convnet-k9" in models:
        counter += " " + COUNTER_K9
    return _HOW_TO_READ.replace("{counter}", counter)


# Every table this module can write (file stems under tables/).
TABLE_NAMES = ("claims", "convergence", "headline", "headline_diff", "matched", "scrambled",
               "calibration", "probe", "sweeps", "data_efficiency", "recon", "routing", "mnist",
               "throughput", "generation", "effective_robustness", "ablation", "adversarial",
               "masking_checks", "budget")

FIGURE_CAPTIONS = {
    "effective_robustness": "Effective robustness (Taori et al. 2020): every cell's "
                            "affNIST-style against clean accuracy on logit axes, and the line "
                            "fitted on the cells of the ConvNets that trained. Above the "
                            "line: more affNIST-style accuracy than the line predicts at that "
                            "clean accuracy. The line averages the fitted ConvNets; where their "
                            "own residuals differ from 0 (the table's note), it is the "
                            "trade-off of none of them.",
    "claims": "The claims scoreboard as a forest plot: each effect with the scoreboard's 95% "
              "interval (over seeds and test digits where the run has the per-image store; C2, "
              "S1 and C5 over seeds only) and its verdict, with the Holm-adjusted one where it "
              "differs; dashed: no effect (0, or 1 for the ratio, log scale); "
              "the labelled arrows in each panel's lower corners say which model each side of no "
              "effect favours.",
    "data_efficiency": "Accuracy against training-set size n (log scale), one panel per test "
                       "set: mean over seeds with the tables' 95% interval as the band, one "
                       "point per seed; hollow points: cells that did not converge. Panels of "
                       "scrambled or displaced digits (if any) plot unconditioned accuracy (how "
                       "often the perturbed digit keeps its class), whereas the part-arrangement "
                       "table conditions it on the intact digit being classified correctly.",
    "affnist_vs_clean": "affNIST-style against clean accuracy, one point per cell (model, n, "
                        "seed); marker area grows with n; dashed: y = x; dotted: the matched "
                        "clean accuracy c*; hollow points: cells that did not converge.",
    "sweeps": "Accuracy against the magnitude of each transformation at the largest n, on the "
              "digits whose ink stays on the canvas: mean over seeds with the tables' 95% "
              "interval as the band, one point per seed; hollow points: cells that did not "
              "converge; grey dashed (right axis): the percentage of digits cropped.",
    "confidence_scrambled": "Raw max score (capsule length for the CapsNet, softmax maximum for "
                            "the ConvNets) on perturbed digits (scrambled or displaced; right "
                            "halves) against the same digits intact (left halves), largest n, "
                            "seeds pooled; lines: quartiles. Each model's intact and perturbed "
                            "halves are compared only with each other: raw scores are not "
                            "comparable across families.",
    "reliability": "Reliability diagram of the clean test set at each model's largest n, seeds "
                   "pooled: accuracy against mean confidence in 15 equal-width bins, of the raw "
                   "max score (left; capsule length, softmax maximum or a head's class activation) "
                   "and after temperature "
                   "scaling fitted on held-out validation images (right); marker area grows "
                   "with the bin's count; dashed: perfect calibration.",
    "throughput": "Training and inference throughput (images/s).",
    routing_report.FIGURE_STEM: routing_report.FIGURE_CAPTION,
    ablation_report.FIGURE_STEM: ablation_report.FIGURE_CAPTION,
    adversarial_report.FIGURE_STEM: adversarial_report.FIGURE_CAPTION,
    adversarial_report.EXAMPLES_STEM: adversarial_report.EXAMPLES_CAPTION,
    "examples": "The first images of each test set (label in the corner).",
    "reconstructions": "CapsNet reconstructions (from the winning capsule) under each input.",
}
