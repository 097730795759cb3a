"""The report wing: reads a run folder's files and writes ``report.md``, tables and figures.

It never trains, evaluates or runs (an import-linter contract in ``pyproject.toml``):
:mod:`~bench.report.read` reads the files, :mod:`~bench.report.claims` states the claims,
:mod:`~bench.report.scoreboard` gives their verdicts, :mod:`~bench.report.sections` builds one
table per function, :mod:`~bench.report.routing` the routing-vs-pooling section,
:mod:`~bench.report.table` renders Markdown and LaTeX, :mod:`~bench.report.text` holds the prose,
:mod:`~bench.report.readout` the per-seed read-outs, :mod:`~bench.report.figures` the figures,
and :mod:`~bench.report.build` puts them together.

The package itself imports nothing, so that its modules can import each other through it
(``from bench.report import figures``) without a cycle.
"""
