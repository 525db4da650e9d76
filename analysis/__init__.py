"""Offline analysis of finished runs: loading, metric ablation, the study report and its figures.

    runs.py      Run: a workdir's config.json, metrics.jsonl, dynamics.npz and summary.json
    ablation.py  recompute the dynamics metrics from the saved per-signal series with another
                 definition (`--set dynamics.<field>=<value>`), exactly as the tracker would
    report.py    the study report over many runs (report.md): assembles the sections below
    views.py     View: one run under one metric definition; Definition: a definition's views
    definitions.py  the logged (and an ablated) definition; the table of the study's open choices
    finding1.py, finding2.py, finding3.py  each finding's computation and its report section
    early_stopping.py  where config.early_stop would have ended each run
    estimability.py  DFA alpha and metastability on known-answer signals
    ablation_section.py  the logged and the ablated definition side by side
    markdown.py  numbers, mean ± std cells and tables, shared with confirm/
    figures.py   the report's figures (matplotlib, Agg)
    confirm/     the pre-registered study's analysis (results/confirm/PLAN.md)
    grid.py, grid_report.py  the definition grid (`analyze.py ablate`)
    stats.py, power.py  the tests behind the verdicts; the power analysis

`python analyze.py --runs=<dir or glob> --out=<dir> [--set dynamics.<field>=<value>]` is the
command line; see the README section "Reproducing the study".
"""
