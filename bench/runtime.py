"""Devices, determinism and the environment a result was produced in."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import torch

from bench.errors import BenchError
from bench.io import sha256_file

_CHECKOUT = Path(__file__).resolve().parents[1]
# The checkout holding datasets/ and results/: the package's own (an editable install, or running
# from the repository); for a plain install, the working directory.
REPO_ROOT = _CHECKOUT if (_CHECKOUT / "datasets" / "mnist").is_dir() else Path.cwd()
DATASETS_DIR = Path(os.environ.get("BENCH_DATASETS_DIR", REPO_ROOT / "datasets"))

PACKAGES = ("torch", "torchvision", "kornia", "numpy", "pandas", "seaborn", "matplotlib")


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` -> cuda when available, else cpu; ``cuda`` without a GPU is a one-line error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise BenchError(f"device '{name}' requested but CUDA is not available (use --device cpu)")
    if name.split(":")[0] not in ("cpu", "cuda", "mps"):
        raise BenchError(f"unknown device '{name}' (expected auto, cpu or cuda[:N])")
    return torch.device(name)


# glibc mallopt parameters (malloc.h): M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD.
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_MMAP_THRESHOLD_MAX = 32 << 20  # glibc's ceiling on 64-bit: 4 MiB * sizeof(long) (mallopt(3))


@functools.cache
def keep_freed_memory() -> bool:
    """Let glibc's malloc reuse freed memory for large CPU tensors instead of returning it.

    By default glibc serves blocks above a (dynamic) threshold with fresh ``mmap`` pages and gives
    them back on ``free``, so every training step pays page faults (the kernel zeroes each new 4 KiB
    page) for its large temporaries. Raising the mmap threshold to glibc's ceiling and the trim
    threshold far above a step's needs keeps them in the heap (mallopt(3)). Our choice, measured
    on 2 cores in three alternating pairs: a width-1/8 CapsNet cell about 5 % faster (median
    ratio 0.95), a ConvNet cell within noise; the arithmetic is the same. Idempotent; does
    nothing (False) off glibc or with ``BENCH_MALLOC_TUNING=0``.
    """
    if os.environ.get("BENCH_MALLOC_TUNING", "1") == "0" or platform.system() != "Linux":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl)
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)
                and mallopt(_M_TRIM_THRESHOLD, 1 << 30) and mallopt(_M_TOP_PAD, 64 << 20))


@contextlib.contextmanager
def torch_threads(n: int | None):
    """torch's intra-op threads set to ``n`` inside the block (None: unchanged), restored after."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def set_deterministic(flag: bool = True) -> None:
    """Ask torch for deterministic kernels (bitwise-repeatable on the CPU)."""
    torch.use_deterministic_algorithms(flag, warn_only=True)
    if torch.cuda.is_available():
        torch.backends.cudnn.benchmark = not flag
        torch.backends.cudnn.deterministic = flag
    if flag:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def cpu_name() -> str:
    """The processor's model name (Linux ``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_identity() -> str:
    """Processor model and the vector ISA torch's CPU kernels use (e.g. AVX2, AVX512): CPU
    results are bitwise repeatable only within one identity, since kernels differ across ISAs."""
    return f"{cpu_name()}, {torch.backends.cpu.get_cpu_capability()}"


def device_name(device: torch.device | str) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({cpu_identity()}, {torch.get_num_threads()} threads)"


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in PACKAGES:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "absent"
    return out


# Tracked files that a run may overwrite (the committed example runs): changing them does not
# change the code, so they do not make a checkout "dirty" (our choice).
_GENERATED = ":(exclude)results"
# The paths whose last commit names the code that built a report (our choice: the package and
# its build settings; a commit that changes only documents or results leaves them alone).
CODE_PATHS = ("bench", "pyproject.toml")


def git_commit(root: Path | None = None) -> str:
    """HEAD's commit, with "+dirty" when a tracked file outside ``results/`` differs from it."""
    root = root or _CHECKOUT
    head = _git(["rev-parse", "HEAD"], root, timeout=5)
    dirty = _dirty(root, (".", _GENERATED))
    if head is None or dirty is None or not head.stdout.strip():
        return "unknown"
    return head.stdout.strip() + dirty


def code_commit(root: Path | None = None) -> str:
    """The last commit that changed :data:`CODE_PATHS`, with "+dirty" when they differ from it
    now; "unknown" outside a git checkout."""
    root = root or _CHECKOUT
    last = _git(["log", "-1", "--format=%H", "--", *CODE_PATHS], root, timeout=5)
    dirty = _dirty(root, CODE_PATHS)
    if last is None or dirty is None or not last.stdout.strip():
        return "unknown"
    return last.stdout.strip() + dirty


def _dirty(root: Path, paths: tuple[str, ...]) -> str | None:
    """"+dirty" when a tracked file under ``paths`` differs from HEAD, "" when none does, None
    when git cannot be run."""
    status = _git(["status", "--porcelain", "--untracked-files=no", "--", *paths], root, timeout=5)
    return None if status is None else ("+dirty" if status.stdout.strip() else "")


def _git(args: list[str], root: Path, timeout: float = 10) -> subprocess.CompletedProcess | None:
    """``git ARGS`` in ``root``; None when git cannot be run (absent, timed out)."""
    try:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True,
                              timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return None


def plan_record(plan: str, profile_file: Path | None, root: Path | None = None) -> dict[str, object]:
    """Where a run's pre-registered analysis plan stands in git, for the manifest: the last commit
    that changed ``plan`` (a path under the checkout) and its date, whether the plan file or the
    profile file differs from that commit now (``git diff``: committed or not), and the file's
    SHA-256. A missing plan file is a one-line :class:`BenchError`; no git: ``commit`` "unknown"."""
    root = root or _CHECKOUT
    path = root / plan
    if not path.is_file():
        raise BenchError(f"analysis plan {path}: no such file (the profile's 'plan' names it)")
    out: dict[str, object] = {"path": plan, "sha256": sha256_file(path)}
    log = _git(["log", "-1", "--format=%H %cI", "--", plan], root)
    fields = log.stdout.split() if log is not None and log.returncode == 0 else []
    if len(fields) != 2:
        return out | {"commit": "unknown"}
    commit, date = fields
    out |= {"commit": commit, "date": date}
    for key, target in (("plan_changed_since", plan), ("profile_changed_since", profile_file)):
        if target is None:
            continue
        where = Path(target) if Path(target).is_absolute() else root / target
        try:
            rel = str(where.resolve().relative_to(root.resolve()))
        except ValueError:  # a profile outside the checkout: git cannot say
            continue
        diff = _git(["diff", "--quiet", commit, "--", rel], root)
        out[key] = None if diff is None else diff.returncode != 0
    return out


def environment(device: torch.device | str) -> dict[str, str]:
    """Columns that say where a number came from (benchopt-style environment columns)."""
    return {
        "platform": platform.platform(),
        "device": str(torch.device(device)),
        "device_name": device_name(device),
        "cpu": cpu_identity(),
        "git_commit": git_commit(),
        "malloc_keeps_freed_memory": str(keep_freed_memory()),
        **{f"version_{k}": v for k, v in versions().items()},
    }


def say(msg: str) -> None:
    """One line of progress to standard error, flushed (standard output stays for results)."""
    print(msg, file=sys.stderr, flush=True)
