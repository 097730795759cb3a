"""Every generated test set of the benchmark: specs, generation on the device, and a verified cache.

Sets (all from the first MNIST *test* digits, so no test digit was seen in training):

- ``clean``: the digits centred on the canvas (affNIST's "just centered": a 6 px border at 40x40;
  at 28x28 the paper's MNIST test set itself).
- ``affnist``: each of ``n_test`` digits under ``affnist_k`` random affine transforms with the
  affNIST ranges (Tieleman 2013; 32 per digit there), see :mod:`bench.data.affine`. Parameters
  per image: ``matrix`` (2x3 forward pixel matrix) and the human-readable ``angle_deg, shear,
  scale_x, scale_y, tx, ty`` (plus ``center_x, center_y`` and ``fits``), as affNIST stores them.
- ``sweep-rotation``, ``sweep-scale``, ``sweep-shear``, ``sweep-translate``: one factor at a
  time on the grids of :class:`bench.config.DataConfig`, the same ``sweep_n`` digits at every
  point (paired comparisons), ``params["value"]`` the factor's magnitude.
- ``scramble-g2``, ``scramble-g3`` (one per ``scramble_grids``) and ``displaced``: the capsule
  paper's part-whole claim (Sabour et al. 2017, Sec. 1), see :mod:`bench.data.scramble`.
- ``affnist-real``: the official affNIST test files when ``real_affnist`` names them.

Every set derived from MNIST carries ``params["source"]``, the index into the MNIST test split,
so a scrambled digit pairs with its intact version in ``clean``. Every random draw comes from a
CPU generator seeded by ``derive_seed(set_name, seed)``: adding a set never changes another.

Cache: ``datasets/cache/<name>-<spec hash>.pt`` and a JSON manifest beside it (spec, seed,
count, sha256 of the tensors, versions, device). The spec covers everything that changes the
pixels: the source digits' checksum, sizes, ranges, grids, seed, the generator's version and,
for warped sets, the device type and torch/kornia versions (CPU and CUDA bilinear warps may
round differently). A cached set is used only when every checksum matches; otherwise it is
rebuilt with a warning, never used.
"""

from __future__ import annotations

import dataclasses
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bench.config import DataConfig
from bench.data import affine, scramble
from bench.data.canvas import place
from bench.errors import BenchError
from bench.io import derive_seed, load_torch, read_json, save_torch, sha256_tensor, stable_hash, write_json

__all__ = [
    "SET_NAMES",
    "TestSet",
    "build_test_sets",
    "default_set_names",
    "generate",
    "test_set_manifest",
]

# Bump when a change to the generators changes any set's pixels: old cache entries then miss.
GENERATOR_VERSION = 1
ROUNDING_NOTE = (
    "images are uint8: after the bilinear warp (kornia warp_affine, align_corners=True, zero "
    "padding) values were rounded to the nearest integer (ties to even) and clamped to [0, 255]"
)
SWEEP_FACTORS = {
    "sweep-rotation": ("rotation", "rotation_grid"),
    "sweep-scale": ("scale", "scale_grid"),
    "sweep-shear": ("shear", "shear_grid"),
    "sweep-translate": ("translate", "translate_grid"),
}
SET_NAMES = ("clean", "affnist", *SWEEP_FACTORS, "scramble-g*", "displaced", "affnist-real")
WARPED = ("affnist", *SWEEP_FACTORS)


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

    def to(self, device: torch.device | str) -> TestSet:
        """A copy with images, labels and params on ``device``."""
        return dataclasses.replace(
            self,
            images=self.images.to(device),
            labels=self.labels.to(device),
            params={k: v.to(device) for k, v in self.params.items()},
        )


# --------------------------------------------------------------------------------------------
# Names and specs


def default_set_names(cfg: DataConfig) -> tuple[str, ...]:
    """The sets a config asks for: only ``clean`` at 28x28 (the paper's MNIST setup), else all."""
    if cfg.canvas < 40:
        return ("clean",)
    names = ["clean", "affnist", *SWEEP_FACTORS]
    names += [f"scramble-g{g}" for g in cfg.scramble_grids] + ["displaced"]
    if cfg.real_affnist:
        names.append("affnist-real")
    return tuple(names)


def _check_name(name: str, cfg: DataConfig) -> None:
    known = ["clean", "affnist", *SWEEP_FACTORS, *(f"scramble-g{g}" for g in cfg.scramble_grids),
             "displaced", "affnist-real"]
    if name not in known:
        raise BenchError(f"unknown test set '{name}' (known: {', '.join(known)})")
    if name == "affnist-real" and not cfg.real_affnist:
        raise BenchError("test set 'affnist-real' needs data.real_affnist = path to the affNIST .mat file(s)")


def _versions() -> dict[str, str]:
    import kornia

    return {"torch": torch.__version__, "kornia": kornia.__version__}


def _spec(name: str, cfg: DataConfig, source_sha: str, device: torch.device) -> dict[str, Any]:
    """Everything that changes the pixels of set ``name`` (and nothing else)."""
    spec: dict[str, Any] = {
        "set": name,
        "generator_version": GENERATOR_VERSION,
        "dataset": cfg.dataset,
        "source_sha256": source_sha,
        "canvas": cfg.canvas,
    }
    if name in ("clean", "affnist") or name.startswith("scramble-") or name == "displaced":
        spec["n_test"] = cfg.n_test
    if name == "affnist":
        spec.update(affnist_k=cfg.affnist_k, affine=dataclasses.asdict(cfg.affine))
    if name in SWEEP_FACTORS:
        factor, grid = SWEEP_FACTORS[name]
        spec.update(sweep_n=cfg.sweep_n, factor=factor, grid=list(getattr(cfg, grid)))
    if name.startswith("scramble-"):
        spec["g"] = int(name.removeprefix("scramble-g"))
    if name == "displaced":
        spec.update(g=min(cfg.scramble_grids), displace_px=cfg.displace_px)
    if name != "clean":
        spec["seed"] = cfg.seed
    if name in WARPED:
        spec.update(device_type=device.type, **_versions())
    return spec


# --------------------------------------------------------------------------------------------
# Generators: (cfg, clean canvases on the device, device, progress bar) -> images, params


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


def _gen_affnist(cfg: DataConfig, canvases, bboxes, device, bar):
    n = canvases.shape[0]
    sources = torch.arange(n).repeat_interleave(cfg.affnist_k)
    params = affine.sample_affine_params(
        sources.numel(), cfg.affine, _generator("affnist", cfg.seed), bboxes[sources], cfg.canvas
    )
    params["matrix"] = affine.affine_matrices(params)
    images = _warp_blocks(canvases, sources, params["matrix"], bar)
    params["source"] = sources
    return images, params


def _gen_sweep(name: str, cfg: DataConfig, canvases, bboxes, device, bar):
    factor, grid_name = SWEEP_FACTORS[name]
    grid = torch.tensor(getattr(cfg, grid_name), dtype=torch.float64)
    n = min(cfg.sweep_n, canvases.shape[0])
    sources = torch.arange(n).repeat(grid.numel())  # point-major: every point, the same digits
    values = grid.repeat_interleave(n)
    gen = _generator(name, cfg.seed) if factor == "translate" else None
    params = affine.sweep_params(factor, values, bboxes[sources], cfg.canvas, gen)
    params["matrix"] = affine.affine_matrices(params)
    images = _warp_blocks(canvases, sources, params["matrix"], bar)
    params["source"] = sources
    return images, params


def _gen_scramble(name: str, cfg: DataConfig, canvases, bboxes, device, bar):
    g = int(name.removeprefix("scramble-g"))
    images, perms = scramble.scramble(canvases, g, _generator(name, cfg.seed), bboxes.to(device))
    bar.update(images.shape[0])
    return images.cpu(), {"perm": perms, "source": torch.arange(images.shape[0])}


def _gen_displaced(cfg: DataConfig, canvases, bboxes, device, bar):
    g = min(cfg.scramble_grids)
    images, clipped = scramble.displace_cells(canvases, g, cfg.displace_px, bboxes.to(device))
    bar.update(images.shape[0])
    return images.cpu(), {"clipped": clipped, "source": torch.arange(images.shape[0])}


def _mnist_test(cfg: DataConfig, data_dir, download) -> tuple[torch.Tensor, torch.Tensor]:
    from bench.data.mnist import load_split

    return load_split("test", cfg.dataset, data_dir, download)


def _generate(name, cfg, device, labels, clean_cpu, bboxes, progress) -> TestSet:
    """Build one set from the MNIST test digits (no cache)."""
    from tqdm.auto import tqdm

    if name == "affnist":
        count = clean_cpu.shape[0] * cfg.affnist_k
    elif name in SWEEP_FACTORS:
        count = min(cfg.sweep_n, clean_cpu.shape[0]) * len(getattr(cfg, SWEEP_FACTORS[name][1]))
    else:
        count = clean_cpu.shape[0]
    with tqdm(total=count, desc=name, unit="img", disable=not progress, leave=False) as bar:
        if name == "clean":
            images, params = clean_cpu.clone(), {"source": torch.arange(count)}
            bar.update(count)
        else:
            canvases = clean_cpu.to(device)
            if name == "affnist":
                images, params = _gen_affnist(cfg, canvases, bboxes, device, bar)
            elif name in SWEEP_FACTORS:
                images, params = _gen_sweep(name, cfg, canvases, bboxes, device, bar)
            elif name.startswith("scramble-"):
                images, params = _gen_scramble(name, cfg, canvases, bboxes, device, bar)
            else:
                images, params = _gen_displaced(cfg, canvases, bboxes, device, bar)
    params = {k: v.cpu() for k, v in params.items()}
    return TestSet(name, images, labels[params["source"]].clone(), params)


def _affnist_real(cfg: DataConfig) -> TestSet:
    """The official affNIST test files named by ``cfg.real_affnist``, as a TestSet."""
    from bench.data.affnist_mat import load_affnist_mat

    images, labels, params, spec = load_affnist_mat(cfg.real_affnist)
    return TestSet("affnist-real", images, labels, params, spec=spec)


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
    _check_name(name, cfg)
    if name == "affnist-real":
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


def _load_cached(pt: Path, js: Path, spec: dict[str, Any]) -> TestSet | None:
    """The cached set if its files exist and every checksum matches, else None (with a warning)."""
    if not (pt.is_file() and js.is_file()):
        return None
    try:
        manifest = read_json(js)
        blob = load_torch(pt)
        ts = TestSet(spec["set"], blob["images"], blob["labels"], dict(blob["params"]), spec=spec)
    except Exception as e:  # unreadable or truncated: rebuild
        warnings.warn(f"test-set cache {pt} is unreadable ({type(e).__name__}: {e}); rebuilding",
                      stacklevel=3)
        return None
    sums = _checksums(ts)
    expected = {k: manifest.get(k) for k in sums}
    if manifest.get("spec") != spec or sums != expected:
        warnings.warn(f"test-set cache {pt} does not match its manifest {js.name} "
                      "(checksum or spec); rebuilding", stacklevel=3)
        return None
    ts.sha256 = sums["sha256"]
    return ts


def _save_cached(pt: Path, js: Path, ts: TestSet, cfg: DataConfig, device: torch.device) -> str:
    """Write the tensors, then the manifest; return the images' sha256."""
    from bench.runtime import device_name

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
        "note": ROUNDING_NOTE if ts.name in WARPED else "images are uint8; pixels copied exactly",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_json(js, manifest)  # written last: a set without its manifest is never used
    return sums["sha256"]


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
    hold their tensors on the CPU (``TestSet.to(device)`` moves one). ``names`` defaults to
    :func:`default_set_names`. ``cache_dir`` defaults to ``$BENCH_CACHE_DIR`` or ``datasets/cache``.
    """
    from bench.runtime import DATASETS_DIR

    device = torch.device(device)
    names = tuple(names) if names is not None else default_set_names(cfg)
    for name in names:
        _check_name(name, cfg)
    if cache_dir is None:
        cache_dir = os.environ.get("BENCH_CACHE_DIR") or DATASETS_DIR / "cache"
    cache = Path(cache_dir)
    out: dict[str, TestSet] = {}
    state: dict[str, Any] = {}

    def sources():  # place the clean digits once, only if a set needs building
        if not state:
            digits, labels = _mnist_test(cfg, data_dir, download)
            clean = place(digits[: cfg.n_test], cfg.canvas)
            state.update(labels=labels, clean=clean, bboxes=affine.digit_bboxes(clean))
        return state

    source_sha = ""
    if any(name != "affnist-real" for name in names):  # the spec pins the source digits' bytes
        source_sha = sha256_tensor(_mnist_test(cfg, data_dir, download)[0])
    for name in names:
        start = time.perf_counter()
        if name == "affnist-real":
            ts = _affnist_real(cfg)
            ts.sha256 = sha256_tensor(ts.images)
            ts.seconds = time.perf_counter() - start
            out[name] = ts
            continue
        spec = _spec(name, cfg, source_sha, device)
        key = f"{name}-{stable_hash(spec)}"
        pt, js = cache / f"{key}.pt", cache / f"{key}.json"
        ts = _load_cached(pt, js, spec)
        if ts is not None:
            ts.cached = True
        else:
            s = sources()
            ts = _generate(name, cfg, device, s["labels"], s["clean"], s["bboxes"], progress)
            ts.spec = spec
            ts.sha256 = _save_cached(pt, js, ts, cfg, device)
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


# --------------------------------------------------------------------------------------------
# CLI
