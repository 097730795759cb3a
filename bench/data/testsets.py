"""Every test set of the benchmark: the table of their kinds, generation on the device, a verified cache.

Sets (all but ``affnist-real`` from the first MNIST *test* digits, so no test digit was seen in
training); :data:`SET_KINDS` and :func:`set_kind` say what each name means:

- ``clean``: the digits centred on the canvas (affNIST's "just centered": a 6 px border at 40x40;
  at 28x28 the paper's MNIST test set itself).
- ``affnist``: the *affNIST-style* set, our generation following affNIST (Tieleman 2013,
  https://www.cs.toronto.edu/~tijmen/affNIST/): each of ``n_test`` digits under ``affnist_k``
  random affine transforms (32 per digit there) with the ranges of
  :class:`bench.config.AffineConfig`, see :mod:`bench.data.affine`. Parameters per image:
  ``matrix`` (2x3 forward pixel matrix) and the human-readable ``angle_deg, shear, scale_x,
  scale_y, tx, ty`` (plus ``center_x, center_y`` and ``fits``), as affNIST stores them;
  ``shear`` acts along ``AffineConfig.shear_axis``, which the spec records when it is not "x".
- ``affnist-real``: the official affNIST test files (not generated) when ``real_affnist`` names
  them, see :mod:`bench.data.affnist_mat`. Distinct from ``affnist`` above.
- ``sweep-rotation``, ``sweep-scale``, ``sweep-shear``, ``sweep-translate``: one factor at a
  time on the grids of :class:`bench.config.DataConfig`, the same ``sweep_n`` digits at every
  point (paired comparisons), ``params["value"]`` the factor's magnitude.
- ``scramble-g2``, ``scramble-g3`` (``scramble-g<k>``, one per ``scramble_grids``) and
  ``displaced``: the capsule paper's part-whole claim (Sabour et al. 2017, Sec. 1), see
  :mod:`bench.data.scramble`.
- ``overlap``: overlapping digits after MultiMNIST (Sabour et al. 2017, Sec. 6), see
  :mod:`bench.data.overlap`: each of the ``n_test`` digits (digit A) with a partner of another
  class (digit B), both shifted by whole pixels up to ``overlap_shift`` (4) in each direction and
  superimposed by a pixel-wise maximum. Parameters per image: ``source`` (A), ``source2`` (B,
  also an index into the MNIST test split), ``label2`` (B's class) and ``shift``
  ``(N, 2, 2)`` = ``[[dxA, dyA], [dxB, dyB]]``. The set's labels are A's classes. The paper
  trains on such pairs; the benchmark's models see single digits only.

The names are identities, never to be renamed: each seeds its set's generator, keys the cache
and fills the ``test_set`` column of ``metrics.csv`` (and so the committed baselines). Note that
the *setup* called ``affnist`` (:mod:`bench.cell.plan`) is another thing: the 40x40
training/evaluation configuration, whose name is kept because it enters every cell's seed.

Every set derived from MNIST carries ``params["source"]``, the index into the MNIST test split,
so a scrambled digit pairs with its intact version in ``clean``. Every random draw comes from a
CPU generator seeded by ``derive_seed(set_name, seed)``: adding a set never changes another.

Cache: ``datasets/cache/<name>-<spec hash>.pt`` and a JSON manifest beside it (spec, seed,
count, sha256 of the tensors, versions, device). A set missing from the cache is built under a
lock file ``<name>-<spec hash>.lock`` (:class:`bench.locks.FileLock`): a process that finds another
one building it waits, then loads the other's result, so no set is built twice at once and none
is read half-written (files are moved into place whole, the manifest last). The spec covers
everything that changes the pixels: the source digits' checksum, sizes, ranges, grids, seed, the
generator's version and, for warped sets, the device type and torch/kornia versions (CPU and
CUDA bilinear warps may round differently). A cached set is used only when every checksum
matches; otherwise it is rebuilt with a warning, never used.
"""

from __future__ import annotations

import dataclasses
import os
import re
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kornia
import torch
from tqdm.auto import tqdm

from bench.config import AffineConfig, DataConfig
from bench.data import affine, overlap, scramble
from bench.data.affnist_mat import load_affnist_mat
from bench.data.canvas import place
from bench.data.mnist import MNIST_COUNTS, load_split
from bench.errors import BenchError
from bench.io import derive_seed, load_torch, read_json, save_torch, sha256_tensor, stable_hash, write_json
from bench.locks import FileLock, describe_holder
from bench.runtime import DATASETS_DIR, device_name

__all__ = [
    "AFFNIST_REAL",
    "AFFNIST_STYLE",
    "CLEAN",
    "DISPLACED",
    "OVERLAP",
    "SET_KINDS",
    "SWEEPS",
    "SetKind",
    "TestSet",
    "build_test_sets",
    "cached_set_names",
    "default_set_names",
    "display_name",
    "find_set_kind",
    "generate",
    "order_set_names",
    "scramble_name",
    "set_kind",
    "set_size",
    "sets_where",
    "test_set_manifest",
]

# Bump when a change to the generators changes any set's pixels: old cache entries then miss.
GENERATOR_VERSION = 1
ROUNDING_NOTE = (
    "images are uint8: after the bilinear warp (kornia warp_affine, align_corners=True, zero "
    "padding) values were rounded to the nearest integer (ties to even) and clamped to [0, 255]"
)


# --------------------------------------------------------------------------------------------
# The kinds of test set: the one place that reads meaning into a set's name


FAMILIES = ("clean", "affine", "real", "sweep", "scramble", "displaced", "overlap",
            "adversarial")


@dataclass(frozen=True)
class SetKind:
    """What a test set is, looked up by its name (:func:`set_kind`).

    Fields:
        name: the set's name, as it seeds the generator and appears in ``metrics.csv``.
        family: ``"clean"`` (centred digits), ``"affine"`` (the affNIST-style set ``affnist``),
            ``"real"`` (the official affNIST files, ``affnist-real``), ``"sweep"`` (one factor on
            a grid), ``"scramble"`` (cells of the digit permuted), ``"displaced"`` (cells
            pushed apart) or ``"overlap"`` (two digits of different classes superimposed).
        factor: sweeps only: ``"rotation"``, ``"scale"``, ``"shear"`` or ``"translate"``; its
            grid is ``DataConfig.<factor>_grid`` and ``params["value"]`` its magnitude.
        grid: ``scramble-g<k>`` only: k, the digit's box cut into k x k cells.
        budget: adversarial sets only: the attack's L-infinity budget (fraction of the pixel
            range); ``factor`` is then the attack (:data:`ATTACKS`).
        order: the family's place in tables and figures (scrambles then by ``grid``).
        label: the name shown to readers in report tables and figure titles (:attr:`display`);
            None shows ``name``. Only the label changes: ``name`` still seeds the generator.

    Derived from the family: :attr:`warped`, :attr:`scrambled`, :attr:`calibrated`.

    Names: the set ``affnist`` (:data:`AFFNIST_STYLE`) is the affNIST-style set, our generation
    following affNIST; ``affnist-real`` (:data:`AFFNIST_REAL`) is the official affNIST test
    files. Neither is the *setup* ``affnist`` of :mod:`bench.cell.plan`, the 40x40 training and
    evaluation configuration, whose name is kept because it enters every cell's seed. Set names
    are never renamed either: they seed the generators and fill the committed baselines.
    """

    name: str
    family: str
    factor: str | None = None
    grid: int | None = None
    budget: float | None = None
    order: int = 0
    label: str | None = None

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise BenchError(f"test-set family must be one of {', '.join(FAMILIES)}, got {self.family!r}")

    @property
    def warped(self) -> bool:
        """Made by a bilinear warp (Kornia): pixels may differ by device and library version."""
        return self.family in ("affine", "sweep")

    @property
    def scrambled(self) -> bool:
        """Parts of each digit moved: scored against its intact twin in ``clean``."""
        return self.family in ("scramble", "displaced")

    @property
    def calibrated(self) -> bool:
        """ECE is reported (our choice: the sets drawn as a whole, not a sweep's grid of values
        nor scrambled digits, whose label is the intact digit's class)."""
        return self.family in ("clean", "affine", "real")

    @property
    def display(self) -> str:
        """What readers see: :attr:`label`, else the set's name."""
        return self.label or self.name

    @property
    def sort_key(self) -> tuple[int, int]:
        """Where the set goes in tables and figures: by ``order``, scrambles then by grid."""
        return (self.order, self.grid or self.budget or 0)


CLEAN = SetKind("clean", "clean", order=0)
AFFNIST_STYLE = SetKind("affnist", "affine", order=1, label="affNIST-style")
AFFNIST_REAL = SetKind("affnist-real", "real", order=2)
SWEEPS = tuple(SetKind(f"sweep-{f}", "sweep", factor=f, order=3 + i)
               for i, f in enumerate(("rotation", "scale", "shear", "translate")))
_SCRAMBLE_ORDER = 7  # scramble-g<k> for any k >= 2: made by set_kind, not listed
DISPLACED = SetKind("displaced", "displaced", order=8)
OVERLAP = SetKind("overlap", "overlap", order=9, label="overlapping digits")
SET_KINDS = (CLEAN, AFFNIST_STYLE, AFFNIST_REAL, *SWEEPS, DISPLACED, OVERLAP)
_BY_NAME = {k.name: k for k in SET_KINDS}
_SCRAMBLE_NAME = re.compile(r"scramble-g([1-9][0-9]*)")
# The official affNIST test set: the 10,000 MNIST test digits x 32 transforms each
# (https://www.cs.toronto.edu/~tijmen/affNIST/); a path naming only some of its files holds fewer.
AFFNIST_REAL_COUNT = 320_000


# Adversarial sets (bench.cell.adversarial): made per cell against its own model when it is
# evaluated, never built or cached here. Named ``<attack>-<budget>``, e.g. ``pgd-0.1``.
ATTACKS = ("fgsm", "pgd", "pgd-votes", "square", "transfer")
_ADVERSARIAL_ORDER = 20  # after every set built here
_ADVERSARIAL_NAME = re.compile(r"(fgsm|pgd-votes|pgd|square|transfer)-([0-9]*\.?[0-9]+)")


def adversarial_name(attack: str, eps: float) -> str:
    """The name of the set of ``attack`` at budget ``eps``: ``pgd-0.1``, ``fgsm-0.05``, ..."""
    if attack not in ATTACKS:
        raise BenchError(f"unknown attack {attack!r} (known: {', '.join(ATTACKS)})")
    return f"{attack}-{eps:g}"


def scramble_name(g: int) -> str:
    """The name of the scrambled set with g x g cells (:func:`set_kind` reads it back)."""
    return f"scramble-g{g}"


def find_set_kind(name: str) -> SetKind | None:
    """The kind of set ``name``, or None for a name the benchmark does not make."""
    kind = _BY_NAME.get(name)
    if kind is None:
        m = _SCRAMBLE_NAME.fullmatch(name)
        if m and int(m.group(1)) >= 2:
            kind = SetKind(name, "scramble", grid=int(m.group(1)), order=_SCRAMBLE_ORDER)
        m = _ADVERSARIAL_NAME.fullmatch(name)
        if m:
            attack, eps = m.group(1), float(m.group(2))
            kind = SetKind(name, "adversarial", factor=attack, budget=eps,
                           order=_ADVERSARIAL_ORDER + ATTACKS.index(attack),
                           label=f"{attack} ε={eps:g}")
    return kind


def display_name(name: str) -> str:
    """The name readers see for set ``name`` (:attr:`SetKind.display`); unknown names unchanged."""
    kind = find_set_kind(name)
    return kind.display if kind is not None else name


def set_kind(name: str) -> SetKind:
    """The kind of set ``name``; an unknown name is a one-line :class:`BenchError`."""
    kind = find_set_kind(name)
    if kind is None:
        known = [*(k.name for k in SET_KINDS if k not in (DISPLACED, OVERLAP)),
                 "scramble-g<k> (k >= 2)", DISPLACED.name, OVERLAP.name,
                 "<attack>-<budget> (attack: " + ", ".join(ATTACKS) + ")"]
        raise BenchError(f"unknown test set '{name}' (known: {', '.join(known)})")
    return kind


def sets_where(names: Iterable[str], test: Callable[[SetKind], bool]) -> list[str]:
    """The known names among ``names`` whose kind passes ``test``, in table order."""
    return order_set_names(t for t in set(names)
                           if (k := find_set_kind(t)) is not None and test(k))


def order_set_names(names: Iterable[str]) -> list[str]:
    """``names`` in table order (:attr:`SetKind.order`), then unknown names alphabetically."""
    kinds = {t: find_set_kind(t) for t in set(names)}
    known = sorted((t for t, k in kinds.items() if k is not None), key=lambda t: kinds[t].sort_key)
    return known + sorted(t for t, k in kinds.items() if k is None)


def _sweep_grid(cfg: DataConfig, kind: SetKind) -> tuple[float, ...]:
    return getattr(cfg, f"{kind.factor}_grid")


def _config_names(cfg: DataConfig) -> tuple[str, ...]:
    """Every set ``cfg`` can make, in the order they are built and written."""
    return (CLEAN.name, AFFNIST_STYLE.name, *(k.name for k in SWEEPS),
            *(scramble_name(g) for g in cfg.scramble_grids), DISPLACED.name, OVERLAP.name,
            AFFNIST_REAL.name)


def default_set_names(cfg: DataConfig) -> tuple[str, ...]:
    """The sets a config asks for: only ``clean`` at 28x28 (the paper's MNIST setup), else all
    (``affnist-real`` only when ``real_affnist`` names its files; a per-factor sweep only when its
    grid has a point: ``rotation_grid = []`` leaves the rotation sweep out)."""
    if cfg.canvas < 40:
        return (CLEAN.name,)
    return tuple(t for t in _config_names(cfg) if (t != AFFNIST_REAL.name or cfg.real_affnist)
                 and (set_kind(t).family != "sweep" or _sweep_grid(cfg, set_kind(t))))


def _check_name(name: str, cfg: DataConfig) -> SetKind:
    known = _config_names(cfg)
    if name not in known:
        raise BenchError(f"unknown test set '{name}' (known: {', '.join(known)})")
    if name == AFFNIST_REAL.name and not cfg.real_affnist:
        raise BenchError(f"test set '{name}' needs data.real_affnist = path to the affNIST .mat file(s)")
    return set_kind(name)


def set_size(cfg: DataConfig, name: str) -> int:
    """Number of images of set ``name`` for ``cfg``, without building it.

    ``affnist-real`` counts the full official test set (:data:`AFFNIST_REAL_COUNT`). A name
    ``cfg`` cannot make is a :class:`BenchError`, as in :func:`generate`.
    """
    kind = _check_name(name, cfg)
    digits = min(cfg.n_test, MNIST_COUNTS["test"])
    if kind.family == "affine":
        return digits * cfg.affnist_k
    if kind.family == "sweep":
        return min(cfg.sweep_n, digits) * len(_sweep_grid(cfg, kind))
    if kind.family == "real":
        return AFFNIST_REAL_COUNT
    return digits  # clean, scramble, displaced, overlap: one image per digit


@dataclass
class TestSet:
    """A named test set: uint8 images ``(N, C, C)``, int64 labels ``(N,)``, per-image params.

    ``params`` values are tensors with N rows (``matrix`` is ``(N, 2, 3)``). ``spec`` says how the
    set was made; ``sha256`` is the checksum of ``images``; ``cached`` and ``seconds`` say
    whether it came from the cache and how long building or loading took.
    """

    __test__ = False  # not a pytest test class

    name: str
    images: torch.Tensor
    labels: torch.Tensor
    params: dict[str, torch.Tensor]
    spec: dict[str, Any] = field(default_factory=dict)
    sha256: str = ""
    cached: bool = False
    seconds: float = 0.0

    def __len__(self) -> int:
        return int(self.images.shape[0])


# --------------------------------------------------------------------------------------------
# Specs


def _versions() -> dict[str, str]:

    return {"torch": torch.__version__, "kornia": kornia.__version__}


# AffineConfig fields that enter a set's spec only when they differ from these values: the
# defaults reproduce the pixels made before the fields existed, so their sets keep their keys.
_AFFINE_SPEC_DEFAULTS = {"scale_distribution": "uniform", "shear_axis": "x"}


def _affine_spec(cfg: AffineConfig) -> dict[str, Any]:
    spec = dataclasses.asdict(cfg)
    for key, default in _AFFINE_SPEC_DEFAULTS.items():
        if spec[key] == default:
            del spec[key]
    return spec


def _spec(name: str, cfg: DataConfig, source_sha: str, device: torch.device) -> dict[str, Any]:
    """Everything that changes the pixels of set ``name`` (and nothing else)."""
    kind = set_kind(name)
    spec: dict[str, Any] = {
        "set": name,
        "generator_version": GENERATOR_VERSION,
        "dataset": cfg.dataset,
        "source_sha256": source_sha,
        "canvas": cfg.canvas,
    }
    if kind.family in ("clean", "affine", "scramble", "displaced", "overlap"):  # first n_test digits
        spec["n_test"] = cfg.n_test
    if kind.family == "affine":
        spec.update(affnist_k=cfg.affnist_k, affine=_affine_spec(cfg.affine))
    if kind.family == "sweep":
        spec.update(sweep_n=cfg.sweep_n, factor=kind.factor, grid=list(_sweep_grid(cfg, kind)))
    if kind.family == "scramble":
        spec["g"] = kind.grid
    if kind.family == "displaced":
        spec.update(g=min(cfg.scramble_grids), displace_px=cfg.displace_px)
    if kind.family == "overlap":
        spec["overlap_shift"] = cfg.overlap_shift
    if kind.family != "clean":
        spec["seed"] = cfg.seed
    if kind.warped:
        spec.update(device_type=device.type, **_versions())
    return spec


# --------------------------------------------------------------------------------------------
# Generators: (kind, cfg, clean canvases on the device, their bounding boxes, their labels,
# progress bar) -> images, params


def _generator(name: str, seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(name, seed))


def _warp_blocks(canvases, sources, matrices, bar) -> torch.Tensor:
    """Warp ``canvases[sources]`` in blocks (bounded memory, progress), result on the CPU."""
    out = torch.empty((sources.numel(), *canvases.shape[1:]), dtype=torch.uint8)
    block = 16_384
    for i in range(0, sources.numel(), block):
        src = canvases[sources[i : i + block].to(canvases.device)]
        out[i : i + block] = affine.warp(src, matrices[i : i + block].to(canvases.device)).cpu()
        bar.update(src.shape[0])
    return out


def _gen_affnist(kind: SetKind, cfg: DataConfig, canvases, bboxes, labels, bar):
    n = canvases.shape[0]
    sources = torch.arange(n).repeat_interleave(cfg.affnist_k)
    params = affine.sample_affine_params(
        sources.numel(), cfg.affine, _generator(kind.name, cfg.seed), bboxes[sources], cfg.canvas
    )
    params["matrix"] = affine.affine_matrices(params, shear_axis=cfg.affine.shear_axis)
    images = _warp_blocks(canvases, sources, params["matrix"], bar)
    params["source"] = sources
    return images, params


def _gen_sweep(kind: SetKind, cfg: DataConfig, canvases, bboxes, labels, bar):
    grid = torch.tensor(_sweep_grid(cfg, kind), dtype=torch.float64)
    n = min(cfg.sweep_n, canvases.shape[0])
    sources = torch.arange(n).repeat(grid.numel())  # point-major: every point, the same digits
    values = grid.repeat_interleave(n)
    gen = _generator(kind.name, cfg.seed) if kind.factor == "translate" else None
    params = affine.sweep_params(kind.factor, values, bboxes[sources], cfg.canvas, gen)
    params["matrix"] = affine.affine_matrices(params)
    images = _warp_blocks(canvases, sources, params["matrix"], bar)
    params["source"] = sources
    return images, params


def _gen_scramble(kind: SetKind, cfg: DataConfig, canvases, bboxes, labels, bar):
    images, perms = scramble.scramble(canvases, kind.grid, _generator(kind.name, cfg.seed),
                                      bboxes.to(canvases.device))
    bar.update(images.shape[0])
    return images.cpu(), {"perm": perms, "source": torch.arange(images.shape[0])}


def _gen_displaced(kind: SetKind, cfg: DataConfig, canvases, bboxes, labels, bar):
    g = min(cfg.scramble_grids)
    images, clipped = scramble.displace_cells(canvases, g, cfg.displace_px, bboxes.to(canvases.device))
    bar.update(images.shape[0])
    return images.cpu(), {"clipped": clipped, "source": torch.arange(images.shape[0])}


def _gen_overlap(kind: SetKind, cfg: DataConfig, canvases, bboxes, labels, bar):
    """Digit i (A) over a partner of another class (B), both shifted (Sabour et al. 2017,
    Sec. 6); see :mod:`bench.data.overlap`."""
    n = canvases.shape[0]
    try:
        drawn = overlap.draw_overlap_params(labels[:n], cfg.overlap_shift,
                                            _generator(kind.name, cfg.seed))
    except ValueError as e:
        raise BenchError(f"test set '{kind.name}': {e} (n_test = {cfg.n_test})") from None
    source, source2 = torch.arange(n), drawn["partner"]
    images = overlap.overlap(canvases, source, source2, drawn["shift"])
    bar.update(n)
    return images.cpu(), {"source": source, "source2": source2,
                          "label2": labels[:n][source2].long().cpu(), "shift": drawn["shift"]}


_GENERATORS = {"affine": _gen_affnist, "sweep": _gen_sweep, "scramble": _gen_scramble,
               "displaced": _gen_displaced, "overlap": _gen_overlap}


def _mnist_test(cfg: DataConfig, data_dir, download) -> tuple[torch.Tensor, torch.Tensor]:

    return load_split("test", cfg.dataset, data_dir, download)


def _generate(name, cfg, device, labels, clean_cpu, bboxes, progress) -> TestSet:
    """Build one set from the MNIST test digits (no cache)."""

    kind = set_kind(name)
    with tqdm(total=set_size(cfg, name), desc=name, unit="img", disable=not progress,
              leave=False) as bar:
        if kind.family == "clean":
            images, params = clean_cpu.clone(), {"source": torch.arange(clean_cpu.shape[0])}
            bar.update(clean_cpu.shape[0])
        else:
            images, params = _GENERATORS[kind.family](kind, cfg, clean_cpu.to(device), bboxes,
                                                      labels, bar)
    params = {k: v.cpu() for k, v in params.items()}
    return TestSet(name, images, labels[params["source"]].clone(), params)


def _affnist_real(cfg: DataConfig) -> TestSet:
    """The official affNIST test files named by ``cfg.real_affnist``, as a TestSet."""

    images, labels, params, spec = load_affnist_mat(cfg.real_affnist)
    return TestSet(AFFNIST_REAL.name, images, labels, params, spec=spec)


def generate(
    name: str,
    cfg: DataConfig,
    device: torch.device | str = "cpu",
    data_dir: str | None = None,
    download: bool = False,
    progress: bool = False,
) -> TestSet:
    """Build one set without touching the cache (for timing and tests); images on the CPU."""
    device = torch.device(device)
    if _check_name(name, cfg).family == "real":
        return _affnist_real(cfg)
    digits, labels = _mnist_test(cfg, data_dir, download)
    clean = place(digits[: cfg.n_test], cfg.canvas)
    return _generate(name, cfg, device, labels, clean, affine.digit_bboxes(clean), progress)


# --------------------------------------------------------------------------------------------
# Cache


def _checksums(ts: TestSet) -> dict[str, Any]:
    return {
        "sha256": sha256_tensor(ts.images),
        "labels_sha256": sha256_tensor(ts.labels),
        "params_sha256": {k: sha256_tensor(v) for k, v in sorted(ts.params.items())},
    }


def _load_cached(pt: Path, js: Path, spec: dict[str, Any], warn: bool = True) -> TestSet | None:
    """The cached set if its files exist and every checksum matches, else None (with a warning
    when ``warn``)."""
    if not (pt.is_file() and js.is_file()):
        return None
    try:
        manifest = read_json(js)
        blob = load_torch(pt)
        ts = TestSet(spec["set"], blob["images"], blob["labels"], dict(blob["params"]), spec=spec)
    except Exception as e:  # unreadable or truncated: rebuild
        if warn:
            warnings.warn(f"test-set cache {pt} is unreadable ({type(e).__name__}: {e}); "
                          "rebuilding", stacklevel=3)
        return None
    sums = _checksums(ts)
    expected = {k: manifest.get(k) for k in sums}
    if manifest.get("spec") != spec or sums != expected:
        if warn:
            warnings.warn(f"test-set cache {pt} does not match its manifest {js.name} "
                          "(checksum or spec); rebuilding", stacklevel=3)
        return None
    ts.sha256 = sums["sha256"]
    return ts


def _save_cached(pt: Path, js: Path, ts: TestSet, cfg: DataConfig, device: torch.device) -> str:
    """Write the tensors, then the manifest; return the images' sha256."""

    save_torch(pt, {"images": ts.images, "labels": ts.labels, "params": ts.params})
    sums = _checksums(ts)
    manifest = {
        "name": ts.name,
        "spec": ts.spec,
        "spec_hash": stable_hash(ts.spec),
        "seed": cfg.seed,
        "count": len(ts),
        **sums,
        "versions": _versions(),
        "device": str(device),
        "device_name": device_name(device),
        "note": ROUNDING_NOTE if set_kind(ts.name).warped else "images are uint8; pixels copied exactly",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_json(js, manifest)  # written last: a set without its manifest is never used
    return sums["sha256"]


def _cache_dir(cache_dir: str | Path | None) -> Path:
    """``cache_dir``, else ``$BENCH_CACHE_DIR``, else ``datasets/cache`` of the checkout."""

    if cache_dir is None:
        cache_dir = os.environ.get("BENCH_CACHE_DIR") or DATASETS_DIR / "cache"
    return Path(cache_dir)


def _cache_paths(cache: Path, name: str, spec: dict[str, Any]) -> tuple[Path, Path, Path]:
    """The tensors, the manifest and the build lock of set ``name`` with ``spec``."""
    key = f"{name}-{stable_hash(spec)}"
    return cache / f"{key}.pt", cache / f"{key}.json", cache / f"{key}.lock"


def cached_set_names(
    cfg: DataConfig,
    device: torch.device | str = "cpu",
    names: tuple[str, ...] | list[str] | None = None,
    data_dir: str | None = None,
    download: bool = False,
    cache_dir: str | Path | None = None,
) -> dict[str, bool]:
    """Whether each set of ``names`` (default: :func:`default_set_names`) has both cache files,
    without loading them (their checksums are verified when :func:`build_test_sets` loads them).
    ``affnist-real`` is read from its own files, never cached: False."""
    device = torch.device(device)
    names = tuple(names) if names is not None else default_set_names(cfg)
    kinds = {name: _check_name(name, cfg) for name in names}
    cache = _cache_dir(cache_dir)
    out = {name: False for name in names}
    if any(k.family != "real" for k in kinds.values()):
        source_sha = sha256_tensor(_mnist_test(cfg, data_dir, download)[0])
        for name, kind in kinds.items():
            if kind.family != "real":
                pt, js, _ = _cache_paths(cache, name, _spec(name, cfg, source_sha, device))
                out[name] = pt.is_file() and js.is_file()
    return out


def build_test_sets(
    cfg: DataConfig,
    device: torch.device | str = "cpu",
    names: tuple[str, ...] | list[str] | None = None,
    data_dir: str | None = None,
    download: bool = False,
    progress: bool = True,
    cache_dir: str | Path | None = None,
) -> dict[str, TestSet]:
    """Build (or load from the verified cache) the test sets ``names`` of ``cfg``.

    Generation runs on ``device`` (Kornia warps on the GPU when given one); the returned sets
    hold their tensors on the CPU. ``names`` defaults to :func:`default_set_names`.
    ``cache_dir`` defaults to ``$BENCH_CACHE_DIR`` or ``datasets/cache``.
    """
    device = torch.device(device)
    names = tuple(names) if names is not None else default_set_names(cfg)
    kinds = {name: _check_name(name, cfg) for name in names}
    cache = _cache_dir(cache_dir)
    out: dict[str, TestSet] = {}
    state: dict[str, Any] = {}

    def sources():  # place the clean digits once, only if a set needs building
        if not state:
            digits, labels = _mnist_test(cfg, data_dir, download)
            clean = place(digits[: cfg.n_test], cfg.canvas)
            state.update(labels=labels, clean=clean, bboxes=affine.digit_bboxes(clean))
        return state

    source_sha = ""
    if any(k.family != "real" for k in kinds.values()):  # the spec pins the source digits' bytes
        source_sha = sha256_tensor(_mnist_test(cfg, data_dir, download)[0])
    for name in names:
        start = time.perf_counter()
        if kinds[name].family == "real":
            ts = _affnist_real(cfg)
            ts.sha256 = sha256_tensor(ts.images)
            ts.seconds = time.perf_counter() - start
            out[name] = ts
            continue
        spec = _spec(name, cfg, source_sha, device)
        pt, js, lock_path = _cache_paths(cache, name, spec)
        ts = _load_cached(pt, js, spec)
        if ts is None:  # build it, unless another process is building it: then wait and load
            lock = FileLock(lock_path, label=f"test set {name}")

            def waiting(holder: dict[str, Any], name: str = name) -> None:
                if progress:
                    print(f"  test set {name}: being built by {describe_holder(holder)}; waiting")

            lock.acquire(poll_s=0.5, on_wait=waiting)
            try:
                ts = _load_cached(pt, js, spec, warn=False)  # built while this one waited
                if ts is None:
                    s = sources()
                    ts = _generate(name, cfg, device, s["labels"], s["clean"], s["bboxes"],
                                   progress)
                    ts.spec = spec
                    ts.sha256 = _save_cached(pt, js, ts, cfg, device)
                else:
                    ts.cached = True
            finally:
                lock.release()
        else:
            ts.cached = True
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        ts.seconds = time.perf_counter() - start
        out[name] = ts
    return out


def test_set_manifest(sets: dict[str, TestSet]) -> dict[str, dict[str, Any]]:
    """``{name: {sha256, count, spec}}`` for a run's manifest."""
    return {
        name: {"sha256": ts.sha256 or sha256_tensor(ts.images), "count": len(ts), "spec": ts.spec}
        for name, ts in sets.items()
    }


test_set_manifest.__test__ = False  # not a pytest test function
