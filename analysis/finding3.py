"""Finding 3 of the study report: training styles in the integration-metastability plane (the
in-sample centroid rule and the held-out test with its controls)."""

import dataclasses
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from analysis import figures, stats
from analysis.markdown import _f, _names, _slug, _table
from analysis.views import HISTORY_NAMES, Definition, View, resolutions


@dataclasses.dataclass
class Styles:
  """Finding 3 for one dataset and history: how well the model explains trajectory points."""

  dataset: str
  prefix: str
  models: List[str]
  points: int
  accuracy: float  # fraction of points nearest their own model's centroid
  baseline: float  # share of the most common model among the points
  centroids: Dict[str, Tuple[float, float]]  # model -> (metastability, integration), raw units

  def verdict(self) -> str:
    where = f'{self.dataset}, {HISTORY_NAMES[self.prefix]}'
    if len(self.models) < 2:
      return f'**{where}**: cannot be assessed: fewer than 2 models with defined trajectories.'
    holds = self.accuracy > self.baseline
    return (
        f'**{where}**: {100 * self.accuracy:.0f}% of {self.points} trajectory points '
        f"(epochs x runs) lie nearer their own model's centroid than any other model's "
        f'(majority baseline {100 * self.baseline:.0f}%, {len(self.models)} models). '
        f'Distinct trajectories per architecture: **{"holds" if holds else "does not hold"}** '
        'by this rule.'
    )


def style_separation(views: Sequence[View], prefix: str) -> List[Styles]:
  out = []
  for dataset in sorted({v.run.dataset_label for v in views}):
    pts, labels = [], []
    for view in (v for v in views if v.run.dataset_label == dataset):
      meta, integ = view.series('metastability', prefix), view.series('integration', prefix)
      ok = np.isfinite(meta) & np.isfinite(integ)
      pts.append(np.stack([meta[ok], integ[ok]], axis=-1))
      labels += [view.run.model] * int(ok.sum())
    pts = np.concatenate(pts) if pts else np.zeros((0, 2))
    labels = np.asarray(labels)
    models = sorted(set(labels.tolist()))
    if not len(pts):
      out.append(Styles(dataset, prefix, models, 0, float('nan'), float('nan'), {}))
      continue
    centroids = {m: pts[labels == m].mean(axis=0) for m in models}
    scale = pts.std(axis=0)
    scale[scale == 0] = 1.0
    z = pts / scale
    cz = np.stack([centroids[m] / scale for m in models])
    nearest = np.asarray(models)[np.argmin(((z[:, None, :] - cz[None]) ** 2).sum(-1), axis=1)]
    shares = [np.mean(labels == m) for m in models]
    out.append(
        Styles(
            dataset,
            prefix,
            models,
            len(pts),
            float(np.mean(nearest == labels)),
            float(max(shares)),
            {m: tuple(map(float, c)) for m, c in centroids.items()},
        )
    )
  return out


def trajectory_features(view: View, prefix: str) -> np.ndarray:
  """f64[4]: mean and final integration and metastability over the epochs where both exist
  (NaN when none does)."""
  meta, integ = view.series('metastability', prefix), view.series('integration', prefix)
  ok = np.isfinite(meta) & np.isfinite(integ)
  if not ok.any():
    return np.full(4, np.nan)
  return np.asarray([integ[ok].mean(), meta[ok].mean(), integ[ok][-1], meta[ok][-1]])


@dataclasses.dataclass
class HeldOut:
  """Finding 3 as a held-out test, for one dataset and history."""

  dataset: str
  prefix: str
  result: Dict[str, Any]  # stats.classification_test
  controls: Dict[str, Optional[Dict[str, Any]]]  # model -> fake-groups control
  shuffled: Optional[Dict[str, Any]] = None  # stats.shuffled_labels_control

  def verdict(self) -> str:
    where = f'{self.dataset}, {HISTORY_NAMES[self.prefix]}'
    r = self.result
    done = {m: c for m, c in self.controls.items() if c is not None}
    if not np.isfinite(r['accuracy']):
      text = (
          f'**{where}**: cannot be assessed: needs 2 or more models with 2 or more runs '
          f'each ({r["n"]} runs, {r["classes"]} models)'
      )
      return text + (f'. {self._fake_groups_text(done)}' if done else '') + '.'
    text = (
        f'**{where}**: leave-one-run-out accuracy {100 * r["accuracy"]:.0f}% over {r["n"]} '
        f'runs of {r["classes"]} models (largest class {100 * r["chance"]:.0f}%, permutation '
        f'null mean {100 * r["null_mean"]:.0f}%), p = {r["p"]:.3f}. Distinct trajectories '
        f'per architecture: **{"holds" if r["distinct"] else "not shown"}**'
    )
    if done:
      text += f'. {self._fake_groups_text(done)}'
    else:
      text += (
          f'. Fake-groups control: no model has the {stats.FAKE_SPLIT_MIN_RUNS} runs a fake '
          f'split needs to be able to reach p < {stats.ALPHA} (with '
          f'{stats.FAKE_SPLIT_MIN_RUNS - 1} or fewer the smallest p is '
          f'{stats.fake_split_min_p(stats.FAKE_SPLIT_MIN_RUNS - 1):.2f} or more)'
      )
    c = self.shuffled
    if c is not None:
      text += (
          f'. Shuffled-architecture control (the same runs with their model labels shuffled, '
          f'{c["repeats"]} times, where the answer is "not distinct"): said "distinct" in '
          f'{c["distinct"]} of {c["repeats"]} ({100 * c["rate"]:.0f}%, allowed '
          f'{100 * stats.ALPHA:.0f}%; '
          f'binomial p = {c["p"]:.2f}): **{"passes" if c["passes"] else "FAILS"}**'
      )
    return text + '.'

  @staticmethod
  def _fake_groups_text(done: Dict[str, Dict[str, Any]]) -> str:
    failed = sorted(m for m, c in done.items() if c['distinct'])
    each = '; '.join(
        f'{m}: {100 * c["accuracy"]:.0f}% over {c["n"]} runs, p = {c["p"]:.3f}'
        for m, c in sorted(done.items())
    )
    return (
        f'Control (the seeds of one model split into two fake groups, alternately by seed, '
        f'where the answer is "not distinct"; {each}): '
        f'**{"passes" if not failed else "FAILS"}** for {len(done) - len(failed)} of '
        f'{len(done)} models{_names(failed)}'
    )


def held_out_styles(views: Sequence[View], prefix: str, num: int = 999) -> List[HeldOut]:
  out = []
  for dataset in sorted({v.run.dataset_label for v in views}):
    chosen = [v for v in views if v.run.dataset_label == dataset]
    feats = np.stack([trajectory_features(v, prefix) for v in chosen])
    ok = np.all(np.isfinite(feats), axis=1)
    labels = np.asarray([v.run.model for v in chosen])[ok]
    feats = feats[ok]
    result = stats.classification_test(feats, labels, num=num)
    controls = {
        m: stats.fake_groups_control(feats, labels, m, num=num)
        for m in sorted(set(labels.tolist()))
    }
    shuffled = None
    if np.isfinite(result['accuracy']):
      shuffled = stats.shuffled_labels_control(feats, labels, seed=len(out))
    out.append(HeldOut(dataset, prefix, result, controls, shuffled))
  return out


def section(definitions: Sequence[Definition], fig_dir: str, rel: str) -> List[str]:
  lines = [
      '## Finding 3: training styles in the integration-metastability plane',
      '',
      'Claim (the study): plotted against each other over training, integration and '
      'metastability trace a distinct trajectory per architecture. Shown: the epoch-mode '
      'trajectory of every run (one panel per dataset, one colour per model, circle = first '
      'epoch with both values defined, square = last epoch). Computed: with both axes '
      "scaled by their standard deviation over the panel's points, the share of trajectory "
      "points (epochs x runs) that lie nearer their own model's centroid than any other "
      "model's, against the share of the most common model (what assigning every point "
      'to one model would score): descriptive only, since it says "distinct" even for two '
      'seeds of one model. The test: each run is summarised by four trajectory features '
      '(mean and final integration and metastability) and classified by architecture with '
      'leave-one-run-out nearest-centroid cross-validation (features standardised on the '
      'training runs); the accuracy is compared with its permutation distribution (the '
      'model labels shuffled across runs, 999 times, or every distinct labelling when '
      f'there are fewer: an exact test); "distinct" needs p < {stats.ALPHA}. '
      'The same test on the runs of one model split into two fake groups, and on all the '
      'runs with their model labels shuffled (100 times, 99 permutations each: at most '
      f'{100 * stats.ALPHA:.0f}% may say "distinct"), must not say "distinct".',
      '',
  ]
  for definition in definitions:
    lines += [f'### {definition.title}', '']
    rows, verdicts = [], []
    prefixes = resolutions(definition.views)
    for prefix in prefixes:
      for styles in style_separation(definition.views, prefix):
        verdicts.append(styles.verdict())
        for model, (meta, integ) in styles.centroids.items():
          rows.append([styles.dataset, HISTORY_NAMES[prefix], model, _f(integ), _f(meta)])
      name = f'trajectories_{_slug(HISTORY_NAMES[prefix])}_{definition.key}.png'
      figures.trajectories(
          definition.views,
          prefix,
          os.path.join(fig_dir, name),
          f'Integration vs metastability over training ({definition.title})',
      )
      lines.append(f'![integration vs metastability, {HISTORY_NAMES[prefix]}]({rel}/{name})')
    lines += (
        ['']
        + _table(['dataset', 'history', 'model', 'mean integration', 'mean metastability'], rows)
        + ['']
    )
    lines += [f'- In-sample centroid rule (descriptive): {v}' for v in verdicts]
    lines += [
        f'- Held-out test: {h.verdict()}'
        for p in prefixes
        for h in held_out_styles(definition.views, p)
    ] + ['']
  return lines
