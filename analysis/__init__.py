"""Offline analysis of finished runs: loading, metric ablation, the study report and its figures.

    runs.py      Run: a workdir's config.json, metrics.jsonl, dynamics.npz and summary.json
    ablation.py  recompute the dynamics metrics from the saved per-signal series with another
                 definition (`--set dynamics.<field>=<value>`), exactly as the tracker would
    report.py    the study's three findings, computed over many runs, as report.md
    figures.py   the report's figures (matplotlib, Agg)

`python analyze.py --runs=<dir or glob> --out=<dir> [--set dynamics.<field>=<value>]` is the
command line; see the README section "Reproducing the study".
"""
