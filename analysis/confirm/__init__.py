r"""The confirmatory study's pre-registered analysis: results/confirm/PLAN.md, as code.

  python analyze.py --runs=results/confirm/runs --out=results/confirm

(`analyze.py` takes this path when a PLAN.md lies beside the runs folder.) Every test,
margin and family is the one PLAN.md fixed before the runs; the constants in design.py name
them. The report states each finding's primary test, its Holm-corrected secondary tests, its
loss-only baseline and a verdict: "holds", "does not hold" (an equivalence test or the
opposite direction rejects) or "not shown"; "pending" while the design's runs are not all in.

Modules: design (the plan's constants, each run's measures, the runs against the cells),
finding1, finding2, finding3 (each finding's primary test, secondaries, baseline, verdict),
tables (markdown pieces) and report (report.md).
"""

from analysis.confirm.design import (
    Design,
    Measures,
    _causal_epoch,
    is_plan_study,
    load,
    measure,
    planned_runs,
    whole_run_integration,
)
from analysis.confirm.report import build_report, runs_in_report

__all__ = [
    'Design',
    'Measures',
    'build_report',
    'is_plan_study',
    'load',
    'measure',
    'planned_runs',
    'runs_in_report',
    'whole_run_integration',
    '_causal_epoch',
]
