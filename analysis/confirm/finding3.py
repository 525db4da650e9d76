"""Finding 3: distinct training styles per architecture (PLAN.md), tested."""

import os
from typing import Any, Dict, List, Sequence

import matplotlib

matplotlib.use('Agg')
import numpy as np  # noqa: E402

from analysis import (  # noqa: E402
    figures,
    runs as runs_lib,  # noqa: E402
    stats,
)
from analysis.confirm.design import (  # noqa: E402  (the plan's constants)  # noqa: E402
    ALPHA,
    CROSS_RECIPE_PERMUTATIONS,
    DATASETS,
    EXACT_LABELLINGS,
    F3_MARGIN,
    PRIMARY_MODELS,
    Design,
    Measures,
)
from analysis.confirm.tables import (  # noqa: E402
    PRIMARY,
    _p,
    _secondary_table,
    _verdict,
)
from analysis.finding2 import epoch_curves  # noqa: E402
from analysis.finding3 import trajectory_features  # noqa: E402
from analysis.markdown import _f, _table  # noqa: E402
from analysis.views import STEP  # noqa: E402


def loss_features(m: Measures) -> np.ndarray:
  """f64[4]: mean and final training loss (per-epoch means), mean and final test accuracy."""
  loss = epoch_curves(m.run)['loss']
  acc = m.run.test_accuracy
  if not (len(loss) and len(acc)):
    return np.full(4, np.nan)
  return np.asarray([np.nanmean(loss), loss[-1], np.nanmean(acc), acc[-1]], np.float64)


def _classify(ms: Sequence[Measures], features, num: int) -> Dict[str, Any]:
  feats = np.stack([features(m) for m in ms]) if ms else np.zeros((0, 4))
  ok = np.all(np.isfinite(feats), axis=1)
  labels = np.asarray([m.run.model for m in ms])
  out = stats.classification_test(feats[ok], labels[ok], num=num)
  out['dropped'] = [m.run.name for m, good in zip(ms, ok) if not good]
  return out


def finding3(design: Design, fig_dir: str) -> List[str]:
  lines = [
      '## Finding 3: distinct training styles per architecture',
      '',
      'Features per run, from the step-resolution series: mean and final integration and '
      'metastability. Primary test per dataset: ResNet-18 against VGG-16 (one SGD recipe), '
      'leave-one-run-out nearest-centroid accuracy against its permutation distribution, '
      f'every labelling enumerated (up to {EXACT_LABELLINGS:,}). Holds if it rejects on both '
      'datasets; does not hold if on one dataset the one-sided 95% upper Clopper-Pearson '
      f'bound of the accuracy is below {F3_MARGIN}.',
      '',
  ]
  rows, primary, names, pvalues = [], {}, [], []
  step = lambda m: trajectory_features(m.view, STEP)
  for dataset in DATASETS:
    ms = [m for model in PRIMARY_MODELS for m in design.cell(model, dataset)]
    r = _classify(ms, step, EXACT_LABELLINGS)
    k = int(round(r['accuracy'] * r['n'])) if np.isfinite(r['accuracy']) else 0
    upper = stats.clopper_pearson_upper(k, r['n']) if r['n'] else np.nan
    primary[dataset] = dict(p=r['p'], upper=upper)
    loss = _classify(ms, loss_features, EXACT_LABELLINGS)
    rows.append(
        [
            runs_lib.DATASET_LABELS[dataset],
            f'{r["n"]}',
            _f(r['accuracy'], 2),
            _p(r['p']),
            _f(upper, 2),
            _f(loss['accuracy'], 2),
        ]
    )
    for prefix, what in (
        ('', '(a) expanding epoch series'),
        ('sliding_', '(b) sliding epoch series'),
    ):
      t = _classify(ms, lambda m, p=prefix: trajectory_features(m.view, p), EXACT_LABELLINGS)
      names.append(f'{runs_lib.DATASET_LABELS[dataset]}: {what}, accuracy {_f(t["accuracy"], 2)}')
      pvalues.append(t['p'])
    names.append(
        f'{runs_lib.DATASET_LABELS[dataset]}: (c) loss-only baseline (loss and accuracy '
        f'curves), accuracy {_f(loss["accuracy"], 2)}'
    )
    pvalues.append(loss['p'])
  lines += _table(
      [
          'dataset',
          'runs',
          'held-out accuracy (dynamics)',
          'exact p',
          'upper 95% bound',
          'held-out accuracy (loss only)',
      ],
      rows,
  )
  pending = design.pending([(m, d) for m in PRIMARY_MODELS for d in DATASETS])
  gated = [d for d in DATASETS if not all(design.gate(m, d)[0] for m in PRIMARY_MODELS)]
  if pending:
    verdict = pending
  elif gated:
    verdict = 'not shown: a cell below the accuracy gate on ' + ', '.join(
        runs_lib.DATASET_LABELS[d] for d in gated
    )
  elif all(primary[d]['p'] < ALPHA for d in DATASETS):
    verdict = 'holds'
  elif any(primary[d]['upper'] < F3_MARGIN for d in DATASETS):
    verdict = 'does not hold'
  else:
    verdict = 'not shown'
  lines += [
      '',
      PRIMARY
      + ', '.join(f'{runs_lib.DATASET_LABELS[d]} p = {_p(primary[d]["p"])}' for d in DATASETS)
      + '.',
      f'Verdict: {_verdict(verdict)}.',
      '',
  ]
  lines += _secondary_table(names, pvalues)
  # Cross-recipe, descriptive.
  rows = []
  for dataset in DATASETS:
    ms = [m for model in PRIMARY_MODELS + ('vit_tiny',) for m in design.cell(model, dataset)]
    r = _classify(ms, step, CROSS_RECIPE_PERMUTATIONS)
    rows.append(
        [
            runs_lib.DATASET_LABELS[dataset],
            str(r['n']),
            str(r['classes']),
            _f(r['accuracy'], 2),
            _f(r['chance'], 2),
            _p(r['p']),
        ]
    )
  lines += [
      '',
      'Cross-recipe, descriptive: the three families together (vit_tiny trains with AdamW, '
      'the CNNs with SGD, so this confounds architecture with optimiser):',
      '',
  ]
  lines += _table(['dataset', 'runs', 'models', 'held-out accuracy', 'largest class', 'p'], rows)
  lines += ['']
  views = [m.view for m in design.measures if m.schedule == 'cosine']
  if views:
    path = os.path.join(fig_dir, 'finding3_trajectories_step.png')
    figures.trajectories(views, STEP, path, 'Integration against metastability, step window')
    lines.append(f'![trajectories, step window](figures/{os.path.basename(path)})')
  return lines
