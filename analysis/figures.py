"""Every figure of the project: the study report's and one run's (analyze.py --workdir).

Each stands on its own: a title naming model, dataset and seed(s), axis labels with units, the
number of samples behind each series, a legend placed off the data, markers on short series,
log scales where a spike would flatten the rest, the convergence signal and the accuracy
plateau marked (or a note that they did not occur), and "not defined: needs N, has M" in
place of an empty axis. Every function takes plain arrays, `runs.Run`s or `views.View`s and
writes one PNG (matplotlib, Agg).
"""

import textwrap
import warnings
from typing import Dict, List, Optional, Sequence

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

HISTORY_TITLES = {
    '': 'expanding history',
    'sliding_': 'sliding window',
    'step_': 'step-mode window',
}
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


def _min_epochs(dcfg) -> int:
  """Probe samples (epochs) the DFA scales of `dcfg` need."""
  from dynamics import tracker  # pylint: disable=g-import-not-at-top

  return tracker.min_dfa_length(dcfg) or 0


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
      kw = dict(color=colors[run.model], ls=styles[run.seed % len(styles)], label=run.name)
      train = run.scalars().get('train/loss')
      spe = run.steps_per_epoch
      if train is not None and len(train) and spe:
        row[0].plot(train[:, 0] / spe, train[:, 1], **kw)
      test_loss = run.epoch_values('eval/loss')
      row[1].plot(_epochs(len(test_loss)), test_loss, marker='.', **kw)
      acc = run.test_accuracy
      row[2].plot(_epochs(len(acc)), acc, marker='.', **kw)
    row[0].set(
        xlabel='epoch',
        ylabel='cross-entropy loss (nats)',
        title=f'{dataset}: training loss (logged steps)',
    )
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
      bars = ax.bar(
          x, means, width, yerr=stds, capsize=3, alpha=0.6, label=f'{dataset} (n = {max(ns)} seeds)'
      )
      for xi, model in zip(x, models):  # every seed as a point
        values = np.asarray(by_model[model].get(dataset, []), np.float64)
        ax.plot(
            np.full(len(values), xi),
            values,
            '.',
            color=bars.patches[0].get_facecolor(),
            ms=6,
            mec='k',
            mew=0.4,
        )
    ax.set_xticks(np.arange(len(models)), models, rotation=20)
    ax.set(
        ylabel='integration (mean DFA alpha, final epoch)',
        title=_wrap(title, 60) + f'\n{HISTORY_TITLES[prefix]}',
    )
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
    lines.append(
        ax_acc.axvline(
            plateau + 1,
            color='k',
            ls='--',
            label=f'accuracy plateau (epoch {plateau + 1}, '
            f'delta {view.dcfg.plateau_delta:g} points)',
        )
    )
  for prefix, color in (('', 'C0'), ('sliding_', 'C1')):
    vol = view.probe[prefix + 'dsi_volatility']
    lines += ax_vol.plot(
        _epochs(len(vol)),
        vol,
        color=color,
        marker='o',
        ms=3,
        label=f'DSI volatility, {HISTORY_TITLES[prefix]}',
    )
    conv = view.convergence(prefix)
    if conv >= 0:
      lead = view.lead(prefix)
      lines.append(
          ax_vol.axvline(
              conv + 1,
              color=color,
              ls=':',
              lw=2,
              label=f'convergence signal, {HISTORY_TITLES[prefix]} '
              f'(epoch {conv + 1}, lead {lead:+d} epochs)'
              if lead is not None
              else f'convergence signal, {HISTORY_TITLES[prefix]} (epoch {conv + 1})',
          )
      )
    else:
      lines += ax_vol.plot(
          [],
          [],
          color=color,
          ls=':',
          label=f'convergence signal, {HISTORY_TITLES[prefix]}: did not fire',
      )
  ax_vol.set_ylabel(f'DSI volatility (std over {view.dcfg.volatility_window_epochs} epochs)')
  if not any(np.isfinite(view.probe[p + 'dsi_volatility']).any() for p in ('', 'sliding_')):
    _undefined(
        ax_vol,
        'DSI volatility',
        _min_epochs(view.dcfg) + int(view.dcfg.volatility_window_epochs) - 1,
        len(view.probe['dsi']),
        'epochs',
    )
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
    unit = 's' if prefix == 'step_' else 'e'  # annotations: step or epoch of the ends
    for view in (v for v in views if v.run.dataset_label == dataset):
      integ = view.series('integration', prefix)
      meta = view.series('metastability', prefix)
      ok = np.isfinite(integ) & np.isfinite(meta)
      if not ok.any():
        continue
      color = colors[view.run.model]
      label = view.run.model if view.run.model not in labelled else None
      labelled.add(view.run.model)
      ax.plot(
          meta[ok],
          integ[ok],
          color=color,
          lw=1.2 if unit == 'e' else 0.6,
          label=label,
          **(_marker(int(ok.sum())) if unit == 'e' else {}),
      )
      ax.plot(meta[ok][0], integ[ok][0], 'o', color=color, mfc='white', ms=8)
      ax.plot(meta[ok][-1], integ[ok][-1], 's', color=color, ms=7)
      first, last = np.flatnonzero(ok)[[0, -1]]
      ax.annotate(f'{unit}{first + 1}', (meta[first], integ[first]), fontsize=7, color=color)
      ax.annotate(f'{unit}{last + 1}', (meta[last], integ[last]), fontsize=7, color=color)
    if not ax.lines:
      has = max(
          (len(v.series('integration', prefix)) for v in views if v.run.dataset_label == dataset),
          default=0,
      )
      _undefined(ax, 'integration', _min_epochs(views[0].dcfg), has, 'epochs')
    ax.plot([], [], 'o', color='gray', mfc='white', label='first epoch defined')
    ax.plot([], [], 's', color='gray', label='last epoch')
    ax.set(
        xlabel='metastability (std over time of Kuramoto R, unitless)',
        ylabel='integration (mean DFA alpha, unitless)',
        title=_wrap(title, 60) + f'\n{dataset}, {HISTORY_TITLES[prefix]}',
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  _save(fig, path)


def ablation_probe(old: Dict, new: Dict, path: str, title: str, old_label: str, new_label: str):
  """Epoch-mode series under the logged and the new definition, side by side."""
  panels = [
      ('integration', 'integration (mean DFA alpha)'),
      ('metastability', 'metastability (std of R)'),
      ('dsi', 'dynamical stability index'),
      ('dsi_volatility', 'DSI volatility (rolling std)'),
  ]
  fig, axes = plt.subplots(2, 2, figsize=(12, 7.5))
  for ax, (key, label) in zip(axes.flat, panels):
    for prefix, color in (('', 'C0'), ('sliding_', 'C1')):
      for series, style, which in ((old, '-', old_label), (new, '--', new_label)):
        y = series[prefix + key]
        ax.plot(
            _epochs(len(y)),
            y,
            color=color,
            ls=style,
            marker='.',
            ms=3,
            label=f'{which}, {HISTORY_TITLES[prefix]}',
        )
    ax.set(xlabel='epoch', ylabel=f'{label} (unitless)', title=label)
    ax.grid(alpha=0.3)
    _epoch_axis(ax, len(old['dsi']))
  axes.flat[0].legend(fontsize=7)
  fig.suptitle(_wrap(title, 110))
  _save(fig, path)


def ablation_step(
    old: Dict,
    new: Dict,
    steps_per_epoch: Optional[int],
    path: str,
    title: str,
    old_label: str,
    new_label: str,
):
  """Step-mode DSI and its volatility under the logged and the new definition."""
  fig, axes = plt.subplots(1, 2, figsize=(12, 4))
  for ax, key, label in (
      (axes[0], 'dsi', 'step-mode DSI'),
      (axes[1], 'dsi_volatility', 'step-mode DSI volatility'),
  ):
    for series, style, which, color in ((old, '-', old_label, 'C0'), (new, '--', new_label, 'C3')):
      y = series[key]
      ok = np.isfinite(y)
      ax.plot(np.flatnonzero(ok) + 1, y[ok], color=color, ls=style, lw=1, label=which)
      conv = series.get('convergence', -1)
      if conv >= 0:
        ax.axvline(conv + 1, color=color, ls=':', label=f'{which}: convergence (step {conv + 1})')
    ax.set(
        xlabel='training step' + (f' ({steps_per_epoch} per epoch)' if steps_per_epoch else ''),
        ylabel=f'{label} (unitless)',
        title=label,
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  fig.suptitle(_wrap(title, 110))
  _save(fig, path)


# --- One run (analyze.py --workdir), to the same standards as the study figures -------------

SHORT_SERIES = 60  # series with fewer points get markers


def run_title(run) -> str:
  """'resnet18 on synthetic, seed 0': what every figure of one run names."""
  return f'{run.model} on {run.dataset_label}, seed {run.seed}'


def not_defined_text(needs: int, has: int, unit: str) -> str:
  """The note that replaces an empty axis or an empty report cell."""
  return f'not defined: needs {needs} {unit}, has {has}'


def _undefined(ax, what: str, needs: int, has: int, unit: str):
  _note(ax, f'{what}: {not_defined_text(needs, has, unit)}')


def _note(ax, text: str):
  ax.text(
      0.5,
      0.5,
      '\n'.join(textwrap.wrap(text, 48)),
      transform=ax.transAxes,
      ha='center',
      va='center',
      fontsize=9,
      color='0.3',
      bbox=dict(boxstyle='round', fc='0.96', ec='0.7'),
  )


def _marker(n: int) -> Dict:
  return dict(marker='o', ms=3) if n < SHORT_SERIES else {}


def _log_if_spiky(ax, y):
  """Log scale when one spike would flatten the rest (positive data spanning > 30x)."""
  y = np.asarray(y, np.float64)
  y = y[np.isfinite(y)]
  if len(y) > 2 and (y > 0).all() and y.max() > 30 * np.median(y):
    ax.set_yscale('log')
    return True
  return False


def _legend(ax, **kw):
  # Outside-the-data placement: matplotlib picks the emptiest corner, small font.
  if ax.get_legend_handles_labels()[0]:
    ax.legend(fontsize=7, loc='best', framealpha=0.85, **kw)


def run_training(run, path: str):
  """Loss (log scale when a spike would flatten it) and accuracy of one run, per step."""
  scalars = run.scalars()
  fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
  for ax, key, ylabel in (
      (ax_loss, 'loss', 'cross-entropy loss (nats)'),
      (ax_acc, 'accuracy', 'accuracy (%)'),
  ):
    train, test = scalars.get(f'train/{key}'), scalars.get(f'eval/{key}')
    counts = []
    if train is not None and len(train):
      ax.plot(
          train[:, 0],
          train[:, 1],
          label=f'train batch (n = {len(train)} logged steps)',
          **_marker(len(train)),
      )
      counts.append(len(train))
    if test is not None and len(test):
      ax.plot(test[:, 0], test[:, 1], marker='o', label=f'test set (n = {len(test)} epochs)')
    if not counts:
      _note(ax, f'{key}: nothing logged yet (metrics.jsonl has no train/{key})')
    elif key == 'loss':
      _log_if_spiky(ax, train[:, 1])
    spe = run.steps_per_epoch
    ax.set(
        xlabel='training step' + (f' ({spe} per epoch)' if spe else ''),
        ylabel=ylabel,
        title=_wrap(f'{run_title(run)}: {key}', 60),
    )
    ax.grid(alpha=0.3)
    _legend(ax)
  _save(fig, path)


def run_step_dynamics(run, path: str):
  """Step-mode integration, metastability, DSI and its volatility, one panel each, with the
  convergence signal marked (or a note that it did not fire / could not be computed)."""
  dyn, dcfg = run.dynamics, run.dynamics_config()
  steps_done = int(dyn['step_dsi'].shape[0])
  window = int(dyn['step_window']) if 'step_window' in dyn else int(dcfg.window)
  every, vol_w = int(dcfg.every_steps), int(dcfg.volatility_window_steps)
  panels = [
      ('integration', 'integration (mean DFA alpha, unitless)', window),
      ('metastability', 'metastability (std over time of Kuramoto R)', window),
      ('dsi', 'dynamical stability index (unitless)', window),
      (
          'dsi_volatility',
          f'DSI volatility (std of the last {vol_w} DSI values)',
          window + (vol_w - 1) * every,
      ),
  ]
  fig, axes = plt.subplots(2, 2, figsize=(11, 7))
  for ax, (key, label, needs) in zip(axes.flat, panels):
    y = np.asarray(dyn[f'step_{key}'], np.float64)
    ok = np.isfinite(y)
    x = np.arange(1, len(y) + 1)  # index i is step i + 1 (steps done)
    if ok.any():
      ax.plot(x[ok], y[ok], lw=1, label=f'n = {int(ok.sum())} windows', **_marker(int(ok.sum())))
      if key == 'dsi_volatility':
        _log_if_spiky(ax, y[ok])
    else:
      _undefined(ax, label.split(' (')[0], needs, steps_done, 'training steps')
    ax.set(xlabel='training step', ylabel=label.split(' (')[0], title=_wrap(label, 50))
    ax.set_xlim(0.5, steps_done + 0.5)
    ax.grid(alpha=0.3)
  ax_vol = axes.flat[3]
  conv = int(dyn.get('step_convergence', -1))
  if conv >= 0:
    ax_vol.axvline(conv + 1, color='C3', ls='--', label=f'convergence signal (step {conv + 1})')
  elif np.isfinite(dyn['step_dsi_volatility']).any():
    ax_vol.plot([], [], color='C3', ls='--', label='convergence signal: did not fire')
  for ax in axes.flat:
    _legend(ax)
  fig.suptitle(
      _wrap(
          f'{run_title(run)}: step-mode dynamics (training forward pass, sliding '
          f'window of {window} steps, computed '
          + ('every step)' if every == 1 else f'every {every} steps)'),
          110,
      )
  )
  _save(fig, path)


def run_epoch_dynamics(run, path: str, min_epochs: int, plateau: int):
  """Epoch-mode DSI and its volatility against test accuracy, convergence signals and the
  accuracy plateau (0-based `plateau`, -1 if none) marked, or notes that they did not occur.

  min_epochs: probe samples the DFA scales need (integration, DSI).
  """
  dyn, dcfg = run.dynamics, run.dynamics_config()
  count = int(dyn['probe_count'])
  epochs = _epochs(count)
  fig, (ax_dsi, ax_vol) = plt.subplots(1, 2, figsize=(12, 5.2))
  for prefix, color in (('', 'C0'), ('sliding_', 'C1')):
    dsi = np.asarray(dyn[f'probe_{prefix}dsi'], np.float64)
    if np.isfinite(dsi).any():
      ax_dsi.plot(
          epochs,
          dsi,
          color=color,
          marker='o',
          ms=3,
          label=f'{HISTORY_TITLES[prefix]} (n = {int(np.isfinite(dsi).sum())} epochs)',
      )
  if not ax_dsi.lines:
    _undefined(ax_dsi, 'epoch-mode DSI', min_epochs, count, 'epochs (probe samples)')
  ax_dsi.set(
      xlabel='epoch',
      ylabel='DSI (unitless)',
      title=_wrap(
          f'{run_title(run)}: DSI per epoch (probe batch of '
          f'{dcfg.probe_size} {dcfg.probe_split} images)',
          60,
      ),
  )
  acc = run.test_accuracy
  ax_acc = ax_vol.twinx()
  handles = []
  if len(acc):
    handles += ax_acc.plot(
        _epochs(len(acc)), acc, color='k', alpha=0.6, marker='.', label='test accuracy'
    )
  ax_acc.set_ylabel('test accuracy (%)')
  if plateau >= 0:
    handles.append(
        ax_acc.axvline(
            plateau + 1, color='k', ls='--', label=f'accuracy plateau (epoch {plateau + 1})'
        )
    )
  else:
    handles += ax_acc.plot([], [], color='k', ls='--', label='accuracy plateau: not reached')
  vol_w = int(dcfg.volatility_window_epochs)
  for prefix, color in (('', 'C0'), ('sliding_', 'C1')):
    vol = np.asarray(dyn[f'probe_{prefix}dsi_volatility'], np.float64)
    if np.isfinite(vol).any():
      handles += ax_vol.plot(
          epochs,
          vol,
          color=color,
          marker='o',
          ms=3,
          label=f'DSI volatility, {HISTORY_TITLES[prefix]}',
      )
    conv = int(dyn[f'probe_{prefix}convergence'])
    if conv >= 0:
      handles.append(
          ax_vol.axvline(
              conv + 1,
              color=color,
              ls=':',
              lw=2,
              label=f'convergence signal, {HISTORY_TITLES[prefix]} ' f'(epoch {conv + 1})',
          )
      )
    else:
      handles += ax_vol.plot(
          [],
          [],
          color=color,
          ls=':',
          label=f'convergence signal, {HISTORY_TITLES[prefix]}: did not fire',
      )
  if not any(np.isfinite(dyn[f'probe_{p}dsi_volatility']).any() for p in ('', 'sliding_')):
    _undefined(ax_vol, 'DSI volatility', min_epochs + vol_w - 1, count, 'epochs (probe samples)')
  ax_vol.set(
      xlabel='epoch',
      ylabel=f'DSI volatility (std over {vol_w} epochs)',
      title='volatility vs test accuracy',
  )
  for ax in (ax_dsi, ax_vol):
    _epoch_axis(ax, count)
    ax.grid(alpha=0.3)
  _legend(ax_dsi)
  # Below the axes: eight entries over two series would cover the data.
  ax_vol.legend(
      handles=handles, fontsize=7, loc='upper center', bbox_to_anchor=(0.5, -0.15), ncol=2
  )
  _save(fig, path)


def run_alphas(run, path: str, min_epochs: int):
  """Per-tap DFA exponents: the probe's whole history if defined, else the last step window;
  a 'not defined' note when neither is."""
  dyn = run.dynamics
  names = [str(n) for n in dyn['signal_names']]
  fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(names)), 4.2))
  probe = dyn.get('probe_alphas')
  if probe is not None and np.isfinite(probe).any():
    alphas, source = probe, f'probe, whole history of {int(dyn["probe_count"])} epochs'
  else:
    alphas = dyn.get('step_alphas')
    source = (
        f'training steps, last window of {int(dyn["step_window"])}'
        if 'step_window' in dyn
        else 'training steps'
    )
  if alphas is not None and np.isfinite(alphas).any():
    ax.bar(range(len(alphas)), alphas, label=f'n = {len(alphas)} signals')
    ax.axhline(0.5, color='k', lw=0.8, ls=':', label='white noise (0.5)')
    ax.axhline(1.5, color='k', lw=0.8, ls='--', label='random walk (1.5)')
  else:
    _undefined(
        ax,
        'per-tap DFA exponent',
        min_epochs,
        int(dyn.get('probe_count', 0)),
        'epochs (probe), and no step window was computed',
    )
  ax.set_xticks(range(len(names)), names, rotation=75, fontsize=7)
  ax.set(
      ylabel='DFA exponent alpha (unitless)',
      title=_wrap(f'{run_title(run)}: per-tap integration ({source})', 80),
  )
  _legend(ax)
  _save(fig, path)


def _band(ax, curves, label, color):
  """The seeds' curves (thin) and their mean with a +-1 sample-std band, over epochs."""
  curves = [np.asarray(c, np.float64) for c in curves]
  length = max((len(c) for c in curves), default=0)
  if not length:
    return
  grid = np.full((len(curves), length), np.nan)
  for i, c in enumerate(curves):
    grid[i, : len(c)] = c
    ax.plot(np.arange(1, len(c) + 1), c, color=color, lw=0.6, alpha=0.35)
  epochs = np.arange(1, length + 1)
  with warnings.catch_warnings():  # an epoch that no seed reached yet: NaN, not a warning
    warnings.simplefilter('ignore', RuntimeWarning)
    mean = np.nanmean(grid, axis=0)
    std = np.nanstd(grid, axis=0, ddof=1) if len(curves) > 1 else np.zeros(length)
  ax.plot(epochs, mean, color=color, lw=2, label=f'{label}: mean of {len(curves)} seeds')
  ax.fill_between(epochs, mean - std, mean + std, color=color, alpha=0.2, label='± 1 std')


def seeds(runs, path: str, title: str):
  """The seeds of one replicated run together: test accuracy, test loss and the epoch-mode DSI
  over epochs, each seed thin and their mean with a +-1 sample-std band."""
  fig, axes = plt.subplots(1, 3, figsize=(15, 4))
  _band(axes[0], [r.test_accuracy for r in runs], 'test accuracy', 'C0')
  axes[0].set(xlabel='epoch', ylabel='test accuracy (%)', title='test accuracy')
  _band(axes[1], [r.epoch_values('eval/loss') for r in runs], 'test loss', 'C1')
  axes[1].set(xlabel='epoch', ylabel='cross-entropy loss (nats)', title='test loss')
  _band(axes[2], [r.dynamics['probe_dsi'] for r in runs if r.has_probe], 'DSI', 'C2')
  axes[2].set(
      xlabel='epoch',
      ylabel='DSI (probe, expanding history)',
      title='dynamical stability index (epoch mode)',
  )
  fig.suptitle(f'{title}: mean and spread of {len(runs)} seeds')
  for ax in axes:
    ax.grid(alpha=0.3)
    _legend(ax)
  _save(fig, path)


NULL_Z = 1.96  # |z| below this: within the central 95% of a normal null


def seed_bands(views, path: str, title: str, prefix: str = ''):
  """Per dataset (rows): integration and metastability over epochs, and their z-scores against
  their surrogate nulls (shuffle, phase) with the null's central 95% shaded; one colour per
  model, each seed thin and the seeds' mean with a +-1 sample-std band."""
  datasets = sorted({v.run.dataset_label for v in views})
  colors = _colors(sorted({v.run.model for v in views}))
  panels = (
      ('integration', 'integration (mean DFA alpha)'),
      ('metastability', 'metastability (std of Kuramoto R)'),
      ('integration_z', 'integration z vs shuffle null'),
      ('metastability_z', 'metastability z vs phase null'),
  )
  fig, axes = plt.subplots(
      len(datasets), len(panels), figsize=(4.6 * len(panels), 3.6 * len(datasets)), squeeze=False
  )
  for row, dataset in zip(axes, datasets):
    chosen = [v for v in views if v.run.dataset_label == dataset]
    for ax, (key, label) in zip(row, panels):
      for model, color in colors.items():
        curves = [v.series(key, prefix) for v in chosen if v.run.model == model]
        if curves:
          _band(ax, curves, model, color)
      if key.endswith('_z'):
        ax.axhspan(-NULL_Z, NULL_Z, color='gray', alpha=0.15, label='null: central 95%')
      ax.set(xlabel='epoch', ylabel=label, title=f'{dataset}: {label}\n{HISTORY_TITLES[prefix]}')
      ax.grid(alpha=0.3)
    _legend(row[0])
    _legend(row[-1])
  fig.suptitle(_wrap(title, 120))
  _save(fig, path)
