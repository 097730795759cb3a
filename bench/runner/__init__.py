"""The runner wing: a run's stages in order over a profile's cells, resumable and lockable.

- :mod:`bench.runner.stages`: :func:`run`, the stages in order, the manifest and the run lock;
- :mod:`bench.runner.todo`: what a run has left (:class:`Plan`), the rates timed here and the
  printed plan with its estimate; the run's list of cells and their folders (:class:`CellList`);
- :mod:`bench.runner.cell`: one cell's life (its lock, damaged files, train then evaluate);
- :mod:`bench.runner.collect`: the cells' files gathered into ``metrics.csv`` and ``cells.csv``;
- :mod:`bench.runner.estimate`: the wall-time formula; :mod:`bench.runner.executor`: where cells
  run (this process, a local pool, or Slurm).
"""

from bench.runner.cell import CellTask, DataSource, run_cell
from bench.runner.stages import run
from bench.runner.todo import STAGE_HELP, STAGE_ORDER, plan_run

__all__ = ["STAGE_HELP", "STAGE_ORDER", "CellTask", "DataSource", "plan_run", "run", "run_cell"]
