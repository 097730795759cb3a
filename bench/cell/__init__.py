"""The cell wing: one (setup, model, n, seed) cell, from its plan to its trained weights and scores.

:mod:`~bench.cell.plan` (which cells a profile has, their specs and folders, the code hash of the
cache key), :mod:`~bench.cell.files` (a cell folder's checksummed files), :mod:`~bench.cell.train`
(only what decides weights: it is hashed into the cache key), :mod:`~bench.cell.convergence` (the
convergence rules, outside the key), :mod:`~bench.cell.evaluate` and :mod:`~bench.cell.throughput`.
"""
