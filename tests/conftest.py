"""Shared fixtures: a `device` fixture so the same tests run on the CPU and, where present, CUDA."""

from __future__ import annotations

import pytest
import torch

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def device(request) -> torch.device:
    return torch.device(request.param)


@pytest.fixture(autouse=True)
def _few_threads():
    """Keep tests light on shared 2-core machines and repeatable."""
    prev = torch.get_num_threads()
    torch.set_num_threads(min(prev, 2))
    yield
    torch.set_num_threads(prev)


class ExternalModels:
    """Models from outside the suite, made in a temporary folder on ``sys.path``: a module, or a
    package "installed" as pip does it (a ``*.dist-info`` folder with METADATA and
    entry_points.txt beside it, which importlib.metadata reads from ``sys.path``)."""

    def __init__(self, root, monkeypatch):
        self.root = root
        monkeypatch.syspath_prepend(str(root))
        self.modules: list[str] = []

    def module(self, name: str, source: str):
        """Write ``<root>/<name>.py`` (``name`` may be dotted: packages are made) and forget
        any imported copy, so the next import reads it."""
        import importlib
        import sys

        *pkgs, leaf = name.split(".")
        folder = self.root
        for p in pkgs:
            folder = folder / p
            folder.mkdir(exist_ok=True)
            (folder / "__init__.py").touch()
        path = folder / f"{leaf}.py"
        path.write_text(source)
        for m in [m for m in sys.modules if m == name.split(".")[0] or
                  m.startswith(name.split(".")[0] + ".")]:
            del sys.modules[m]
        importlib.invalidate_caches()
        self.modules.append(name.split(".")[0])
        return path

    def install(self, dist: str, version: str, entry_points: dict[str, str]):
        """A dist-info for distribution ``dist`` whose ``capsbench.models`` entry points are
        ``entry_points`` (name -> "module:factory"), then re-read the installed entry points."""
        import shutil

        from bench.models import registry

        for old in self.root.glob(f"{dist.replace('-', '_')}-*.dist-info"):
            shutil.rmtree(old)
        info = self.root / f"{dist.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        tops = sorted({v.split(":")[0].split(".")[0] for v in entry_points.values()})
        (info / "top_level.txt").write_text("\n".join(tops) + "\n")
        (info / "entry_points.txt").write_text(
            f"[{registry.ENTRY_POINT_GROUP}]\n"
            + "".join(f"{k} = {v}\n" for k, v in entry_points.items()))
        registry.refresh_entry_points()
        return info


@pytest.fixture
def external(tmp_path, monkeypatch):
    """:class:`ExternalModels` in ``tmp_path``; the registry is as before after the test."""
    import sys

    from bench.models import registry

    registry.model_names()  # the suite's own are registered before the snapshot
    saved = dict(registry._REGISTRY)
    (tmp_path / "ext").mkdir()
    ext = ExternalModels(tmp_path / "ext", monkeypatch)
    registry.refresh_entry_points()
    yield ext
    # modules that registered a model are imported afresh next time, so that they register again
    ext.modules += [info.module.split(".")[0] for name, info in registry._REGISTRY.items()
                    if name not in saved]
    registry._REGISTRY.clear()
    registry._REGISTRY.update(saved)
    for top in set(ext.modules):
        for m in [m for m in sys.modules if m == top or m.startswith(top + ".")]:
            del sys.modules[m]
    monkeypatch.undo()  # sys.path first, so the entry points are read without the folder
    registry.refresh_entry_points()
