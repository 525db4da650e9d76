"""The study report's figures. Each stands on its own: title, axis labels with units, legend.

Every function takes plain arrays or `report.View`s and writes one PNG (matplotlib, Agg).
"""

import textwrap
from typing import Dict, List, Optional, Sequence

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

HISTORY_TITLES = {'': 'expanding history', 'sliding_': 'sliding window'}
DPI = 110


def _save(fig, path):
  fig.tight_layout()
  fig.savefig(path, dpi=DPI)
  plt.close(fig)


def _epochs(n):
  return np.arange(1, n + 1)


def _epoch_axis(ax, n: Optional[int] = None):
  """Whole epochs on the x axis, 1..n when n is known."""
  ax.xaxis.set_major_locator(MaxNLocator(integer=True))
  if n:
    ax.set_xlim(0.5, n + 0.5)


def _wrap(title: str, width: int = 90) -> str:
  return '\n'.join(textwrap.wrap(title, width))


def _colors(keys: Sequence[str]) -> Dict[str, str]:
  return {k: f'C{i % 10}' for i, k in enumerate(keys)}


def training_curves(runs, path: str):
  """Train loss, test loss and test accuracy per epoch; one row per dataset, a line per run."""
  datasets = sorted({r.dataset_label for r in runs})
  colors = _colors(sorted({r.model for r in runs}))
  styles = ['-', '--', ':', '-.']
  fig, axes = plt.subplots(len(datasets), 3, figsize=(15, 3.8 * len(datasets)), squeeze=False)
  for row, dataset in zip(axes, datasets):
    for run in (r for r in runs if r.dataset_label == dataset):
      kw = dict(color=colors[run.model], ls=styles[run.seed % len(styles)],
                label=run.name)
      train = run.scalars().get('train/loss')
      spe = run.steps_per_epoch
      if train is not None and len(train) and spe:
        row[0].plot(train[:, 0] / spe, train[:, 1], **kw)
      test_loss = run.epoch_values('eval/loss')
      row[1].plot(_epochs(len(test_loss)), test_loss, marker='.', **kw)
      acc = run.test_accuracy
      row[2].plot(_epochs(len(acc)), acc, marker='.', **kw)
    row[0].set(xlabel='epoch', ylabel='cross-entropy loss (nats)',
               title=f'{dataset}: training loss (logged steps)')
    row[1].set(xlabel='epoch', ylabel='cross-entropy loss (nats)', title=f'{dataset}: test loss')
    row[2].set(xlabel='epoch', ylabel='test accuracy (%)', title=f'{dataset}: test accuracy')
    for ax in row:
      ax.grid(alpha=0.3)
      ax.legend(fontsize=7)
      _epoch_axis(ax)
  _save(fig, path)


def integration_bars(table: Dict[str, Dict[str, Dict[str, List[float]]]], path: str, title: str):
  """Final integration per model and dataset: bars = seed mean, error bars = seed std.

  table: {history prefix: {model: {dataset label: [final values over seeds]}}}.
  """
  fig, axes = plt.subplots(1, len(table), figsize=(6.5 * len(table), 4.2), squeeze=False)
  for ax, (prefix, by_model) in zip(axes[0], table.items()):
    models = list(by_model)
    datasets = sorted({d for cells in by_model.values() for d in cells})
    width = 0.8 / max(len(datasets), 1)
    for j, dataset in enumerate(datasets):
      means, stds, ns = [], [], []
      for model in models:
        values = np.asarray(by_model[model].get(dataset, []), np.float64)
        values = values[np.isfinite(values)]
        means.append(values.mean() if len(values) else np.nan)
        stds.append(values.std(ddof=1) if len(values) > 1 else 0.0)
        ns.append(len(values))
      x = np.arange(len(models)) + (j - (len(datasets) - 1) / 2) * width
      ax.bar(x, means, width, yerr=stds, capsize=3, label=f'{dataset} (n = {max(ns)} seeds)')
    ax.set_xticks(np.arange(len(models)), models, rotation=20)
    ax.set(ylabel='integration (mean DFA alpha, final epoch)',
           title=_wrap(title, 60) + f'\n{HISTORY_TITLES[prefix]}')
    ax.axhline(0.5, color='k', lw=0.8, ls=':', label='white noise (0.5)')
    ax.grid(alpha=0.3, axis='y')
    ax.legend(fontsize=8)
  _save(fig, path)


def lead_figure(view, path: str, title: str):
  """Test accuracy and DSI volatility per epoch, convergence signals and plateau marked."""
  acc = view.run.test_accuracy
  fig, ax_acc = plt.subplots(figsize=(9, 4.5))
  ax_acc.plot(_epochs(len(acc)), acc, color='k', marker='.', label='test accuracy')
  ax_acc.set(xlabel='epoch', ylabel='test accuracy (%)', title=_wrap(title, 80))
  _epoch_axis(ax_acc, len(view.probe['dsi']))
  ax_vol = ax_acc.twinx()
  lines = []
  plateau = view.plateau
  if plateau >= 0:
    lines.append(ax_acc.axvline(plateau + 1, color='k', ls='--',
                                label=f'accuracy plateau (epoch {plateau + 1}, '
                                      f'delta {view.dcfg.plateau_delta:g} points)'))
  for prefix, color in (('', 'C0'), ('sliding_', 'C1')):
    vol = view.probe[prefix + 'dsi_volatility']
    lines += ax_vol.plot(_epochs(len(vol)), vol, color=color, marker='o', ms=3,
                         label=f'DSI volatility, {HISTORY_TITLES[prefix]}')
    conv = view.convergence(prefix)
    if conv >= 0:
      lead = view.lead(prefix)
      lines.append(ax_vol.axvline(conv + 1, color=color, ls=':', lw=2,
                                  label=f'convergence signal, {HISTORY_TITLES[prefix]} '
                                        f'(epoch {conv + 1}, lead {lead:+d} epochs)'
                                  if lead is not None else
                                  f'convergence signal, {HISTORY_TITLES[prefix]} (epoch {conv + 1})'))
    else:
      lines += ax_vol.plot([], [], color=color, ls=':',
                           label=f'convergence signal, {HISTORY_TITLES[prefix]}: did not fire')
  ax_vol.set_ylabel(f'DSI volatility (std over {view.dcfg.volatility_window_epochs} epochs)')
  ax_acc.grid(alpha=0.3)
  ax_acc.legend(handles=[ax_acc.lines[0]] + lines, fontsize=7, loc='best')
  _save(fig, path)


def trajectories(views, prefix: str, path: str, title: str):
  """Integration against metastability over epochs: a panel per dataset, a line per run."""
  datasets = sorted({v.run.dataset_label for v in views})
  colors = _colors(sorted({v.run.model for v in views}))
  fig, axes = plt.subplots(1, len(datasets), figsize=(6.5 * len(datasets), 5), squeeze=False)
  for ax, dataset in zip(axes[0], datasets):
    labelled = set()
    for view in (v for v in views if v.run.dataset_label == dataset):
      integ = view.probe[prefix + 'integration']
      meta = view.probe[prefix + 'metastability']
      ok = np.isfinite(integ) & np.isfinite(meta)
      if not ok.any():
        continue
      color = colors[view.run.model]
      label = view.run.model if view.run.model not in labelled else None
      labelled.add(view.run.model)
      ax.plot(meta[ok], integ[ok], color=color, marker='.', ms=4, lw=1.2, label=label)
      ax.plot(meta[ok][0], integ[ok][0], 'o', color=color, mfc='white', ms=8)
      ax.plot(meta[ok][-1], integ[ok][-1], 's', color=color, ms=7)
      first, last = np.flatnonzero(ok)[[0, -1]]
      ax.annotate(f'e{first + 1}', (meta[first], integ[first]), fontsize=7, color=color)
      ax.annotate(f'e{last + 1}', (meta[last], integ[last]), fontsize=7, color=color)
    ax.plot([], [], 'o', color='gray', mfc='white', label='first epoch defined')
    ax.plot([], [], 's', color='gray', label='last epoch')
    ax.set(xlabel='metastability (std over time of Kuramoto R, unitless)',
           ylabel='integration (mean DFA alpha, unitless)',
           title=_wrap(title, 60) + f'\n{dataset}, {HISTORY_TITLES[prefix]}')
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  _save(fig, path)


def ablation_probe(old: Dict, new: Dict, path: str, title: str, old_label: str, new_label: str):
  """Epoch-mode series under the logged and the new definition, side by side."""
  panels = [('integration', 'integration (mean DFA alpha)'),
            ('metastability', 'metastability (std of R)'),
            ('dsi', 'dynamical stability index'),
            ('dsi_volatility', 'DSI volatility (rolling std)')]
  fig, axes = plt.subplots(2, 2, figsize=(12, 7.5))
  for ax, (key, label) in zip(axes.flat, panels):
    for prefix, color in (('', 'C0'), ('sliding_', 'C1')):
      for series, style, which in ((old, '-', old_label), (new, '--', new_label)):
        y = series[prefix + key]
        ax.plot(_epochs(len(y)), y, color=color, ls=style, marker='.', ms=3,
                label=f'{which}, {HISTORY_TITLES[prefix]}')
    ax.set(xlabel='epoch', ylabel=f'{label} (unitless)', title=label)
    ax.grid(alpha=0.3)
    _epoch_axis(ax, len(old['dsi']))
  axes.flat[0].legend(fontsize=7)
  fig.suptitle(_wrap(title, 110))
  _save(fig, path)


def ablation_step(old: Dict, new: Dict, steps_per_epoch: Optional[int], path: str, title: str,
                  old_label: str, new_label: str):
  """Step-mode DSI and its volatility under the logged and the new definition."""
  fig, axes = plt.subplots(1, 2, figsize=(12, 4))
  for ax, key, label in ((axes[0], 'dsi', 'step-mode DSI'),
                         (axes[1], 'dsi_volatility', 'step-mode DSI volatility')):
    for series, style, which, color in ((old, '-', old_label, 'C0'), (new, '--', new_label, 'C3')):
      y = series[key]
      ok = np.isfinite(y)
      ax.plot(np.flatnonzero(ok) + 1, y[ok], color=color, ls=style, lw=1, label=which)
      conv = series.get('convergence', -1)
      if conv >= 0:
        ax.axvline(conv + 1, color=color, ls=':', label=f'{which}: convergence (step {conv + 1})')
    ax.set(xlabel='training step' + (f' ({steps_per_epoch} per epoch)' if steps_per_epoch else ''),
           ylabel=f'{label} (unitless)', title=label)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  fig.suptitle(_wrap(title, 110))
  _save(fig, path)
