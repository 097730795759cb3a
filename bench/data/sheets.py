"""Contact sheets: a PNG grid of a test set's examples, each titled with its label and parameters.

For eyeballing a set (digits upright, transforms plausible, scrambles visibly scrambled), not
for the paper's figures. matplotlib's Agg canvas on a ``Figure`` object: no pyplot global state.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from bench.data.testsets import find_set_kind
from bench.io import atomic_path

__all__ = ["contact_sheet", "describe", "pick_examples"]


def _family(ts) -> str | None:
    kind = find_set_kind(ts.name)
    return None if kind is None else kind.family


def pick_examples(ts, rows: int = 6, cols: int = 8) -> tuple[list[int], int]:
    """Indices to show and the number of columns: for sweeps one column per grid point."""
    n = len(ts)
    if _family(ts) == "sweep" and n:
        values = ts.params["value"]
        points = torch.unique_consecutive(values)
        per_point = n // points.numel()
        cols = points.numel()
        rows = min(rows, per_point)
        # row r shows digit r at every point (point-major layout: index = point * per_point + r)
        return [p * per_point + r for r in range(rows) for p in range(cols)], cols
    k = min(n, rows * cols)
    step = max(1, n // k) if k else 1
    return [i * step for i in range(k)], cols


def describe(ts, i: int) -> str:
    """A short title for example ``i``: label, then the parameters of the set's kind that made it."""
    p = ts.params
    parts = [str(int(ts.labels[i]))]
    family = _family(ts)
    if family == "affine":
        parts.append(f"r{p['angle_deg'][i]:+.0f} sh{p['shear'][i]:+.2f}")
        parts.append(f"\nsx{p['scale_x'][i]:.2f} sy{p['scale_y'][i]:.2f}")
        parts.append(f"t({p['tx'][i]:+.0f},{p['ty'][i]:+.0f})")
    elif family == "sweep":
        parts.append(f"v={p['value'][i]:g}")
    elif family == "scramble":
        parts.append("p" + "".join(str(int(v)) for v in p["perm"][i]))
    elif family == "displaced":
        parts.append(f"clip {int(p['clipped'][i])}")
    elif family == "overlap":  # the second digit's class, then the shifts of both digits
        (ax, ay), (bx, by) = p["shift"][i].tolist()
        parts.append(f"+{int(p['label2'][i])} a({ax:+d},{ay:+d}) b({bx:+d},{by:+d})")
    return " ".join(parts)


def contact_sheet(ts, path: str | os.PathLike, rows: int = 6, cols: int = 8, dpi: int = 110) -> Path:
    """Write a PNG grid of examples of ``ts`` (a :class:`~bench.data.testsets.TestSet`) to ``path``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    idx, cols = pick_examples(ts, rows, cols)
    rows = max(1, -(-len(idx) // cols))
    height = 1.25 * rows + 0.3
    fig = Figure(figsize=(1.05 * cols, height))
    FigureCanvasAgg(fig)
    fig.suptitle(f"{ts.name}: {len(ts):,} images", fontsize=8)
    images = ts.images.cpu()
    for j, i in enumerate(idx):
        ax = fig.add_subplot(rows, cols, j + 1)
        ax.imshow(images[i].numpy(), cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        ax.set_title(describe(ts, i), fontsize=5, pad=2)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout(pad=0.3, rect=(0, 0, 1, 1 - 0.25 / height))  # room for the suptitle
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, metadata={"Software": None})
    return path
