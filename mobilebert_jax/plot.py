"""One PNG of the curves a run logged, from its metrics.jsonl: the one way this project plots a run.

    python -m mobilebert_jax.plot WORKDIR [--out=WORKDIR/curves.png]

Which panels a run gets is its stage's choice (`train.stage.Stage.curves(config)` names a layout of `LAYOUTS`),
read from the run's recorded `config.json`; a workdir without one gets the standard layout.

- standard (pretraining, PD, fine-tuning): loss (training; evaluation dashed), accuracy and the other evaluation
  metrics, learning rate, throughput (tokens/s, else examples/s).
- layer_transfer (progressive, joint and auxiliary distillation): the optimized loss; held-out MLM and NSP
  accuracy; one heat map per transfer distance (feature map, mean, variance, attention) of every student layer to
  its teacher layer by step, log colour, with the progressive phases' boundaries dashed; the effective learning
  rate of each layer (base rate times its multiplier: lines up to MAX_SERIES layers, a heat map above); throughput.

No panel has more than MAX_SERIES lines, and legends sit below their panel, outside the data. The trainer writes
`<workdir>/curves.png` at the end of every run, so every stage of the pipeline has one.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from typing import Callable, Optional

from etils import epath

from mobilebert_jax import jsonl
from mobilebert_jax.errors import DataError

CURVES_PNG = "curves.png"
PANEL_INCHES = (6.0, 3.5)  # one panel; two panels a row
DPI = 100
MAX_SERIES = 8  # lines in one panel; more per-layer series become a heat map
_NOT_CURVES = {"step", "time", "phase"}
# Metrics logged under another name by runs recorded before: old key -> current key.
RENAMED_METRICS = {"stage": "phase"}  # progressive transfer's phase (a stage is a kind of run)
_LAYER_KEY = re.compile(r"^layer_(\d+)/(\w+)$")
_MULTIPLIER = re.compile(r"^lr_multiplier/layer_(\d+)$")
DISTANCES = (("feature_map", "feature map (FMT)"), ("mean", "mean"), ("variance", "variance"),
             ("attention", "attention KL"))


@dataclasses.dataclass(frozen=True)
class Line:
    label: str
    key: str
    records: list  # the records (training or evaluation) the key is read from
    dashed: bool = False
    times: str = ""  # a key of the same records to multiply by (the base learning rate)


@dataclasses.dataclass(frozen=True)
class HeatMap:
    """rows[i] is layer i's value at each of `steps` (NaN where not logged)."""
    steps: list
    rows: list
    log: bool  # log colour scale


@dataclasses.dataclass(frozen=True)
class Panel:
    title: str
    lines: tuple = ()
    heat: Optional[HeatMap] = None
    log: bool = False  # a log axis, when the values span more than a factor of 20
    boundaries: tuple = ()  # steps drawn as vertical dashed lines (the progressive phases' ends)
    stepwise: bool = False  # a logged value holds since the previous logged step (a piecewise-constant rate)


def read_metrics(workdir: str) -> tuple[list[dict], list[dict]]:
    """(training records, evaluation records) of `workdir/metrics.jsonl`, each in step order.

    A resumed run appends; the last record of each step wins. A line cut short by a crash is skipped with a
    warning; a JSON value that is not a record of a step is an error.
    """
    path = epath.Path(workdir) / "metrics.jsonl"
    if not path.exists():
        raise DataError(f"{path}: not found (the trainer writes it at the first logging step)")
    train, evals = {}, {}
    for n, record in jsonl.records(path):
        try:
            step = int(record["step"])
        except (ValueError, KeyError, TypeError) as e:
            raise DataError(f"{path}, line {n}: not a metrics record (no step: {e!r})") from None
        record = current_names(record)
        target = evals if any(k.startswith("eval/") for k in record) else train
        target[step] = {**target.get(step, {}), **record}
    return [train[s] for s in sorted(train)], [evals[s] for s in sorted(evals)]


def current_names(record: dict) -> dict:
    """`record` with the keys of RENAMED_METRICS under their current names."""
    return {RENAMED_METRICS.get(k, k): v for k, v in record.items()}


def series(records: list[dict], key: str, times: str = "") -> tuple[list[int], list[float]]:
    """(steps, values) of `key` (times `times` where given) where it was logged and finite."""
    steps, values = [], []
    for r in records:
        v = r.get(key)
        if times:
            v = v * r[times] if isinstance(v, (int, float)) and isinstance(r.get(times), (int, float)) else None
        if isinstance(v, (int, float)) and math.isfinite(v):
            steps.append(r["step"])
            values.append(float(v))
    return steps, values


def phase_boundaries(records: list[dict]) -> list[int]:
    """The last logged step of each phase that another follows (exact when log_every divides phase_steps)."""
    out, last, last_step = [], None, None
    for r in records:
        phase = r.get("phase")
        if phase is None:
            continue
        if last is not None and phase != last:
            out.append(last_step)
        last, last_step = phase, r["step"]
    return out


def _keys(records: list[dict]) -> list[str]:
    return sorted({k for r in records for k in r} - _NOT_CURVES)


def _throughput(train: list[dict]) -> list[Panel]:
    keys = _keys(train)
    rate = "tokens_per_second" if "tokens_per_second" in keys else "examples_per_second"
    return [Panel(rate.replace("_", " "), (Line(rate, rate, train),))] if rate in keys else []


def standard_panels(train: list[dict], evals: list[dict]) -> list[Panel]:
    """Loss, accuracy and evaluation metrics, learning rate, throughput; grouped keys (`a/b`, a per-layer family)
    are a layout's own business and left out."""
    train_keys = [k for k in _keys(train) if "/" not in k]
    eval_keys = [k for k in _keys(evals) if k.startswith("eval/") and "/" not in k[len("eval/"):]]
    losses = [Line(k, k, train) for k in train_keys if k.endswith("loss")]
    losses += [Line(k, k, evals, dashed=True) for k in eval_keys if k.endswith("loss")]
    scores = [Line(k, k, train) for k in train_keys if "accuracy" in k]
    scores += [Line(k, k, evals, dashed=True) for k in eval_keys if not k.endswith("loss")]
    lr = [k for k in ("learning_rate", "lr") if k in train_keys][:1]
    out = [Panel("loss", tuple(losses)), Panel("accuracy and evaluation metrics", tuple(scores)),
           Panel("learning rate", tuple(Line(k, k, train) for k in lr))] + _throughput(train)
    return [p for p in out if p.lines]


def _layers(records: list[dict], name: str) -> list[int]:
    return sorted({int(m.group(1)) for r in records for k in r if (m := _LAYER_KEY.match(k)) and m.group(2) == name})


def _heat(records: list[dict], key: Callable[[int], str], layers: list[int], log: bool,
          value: Callable[[dict, str], Optional[float]] = lambda r, k: r.get(k)) -> HeatMap:
    steps = [r["step"] for r in records]
    rows = []
    for i in layers:
        row = []
        for r in records:
            v = value(r, key(i))
            row.append(float(v) if isinstance(v, (int, float)) and math.isfinite(v) and (v > 0 or not log)
                       else math.nan)
        rows.append(row)
    return HeatMap(steps, rows, log)


def layer_transfer_panels(train: list[dict], evals: list[dict]) -> list[Panel]:
    """A distillation run with layer-wise transfer: what the recipe does, layer by layer (module docstring)."""
    train_keys, eval_keys = _keys(train), _keys(evals)
    bounds = tuple(phase_boundaries(train))
    loss = [Line("loss (optimized)", "loss", train)]
    if "pd_mlm_loss" in train_keys:
        loss += [Line("transfer loss", "transfer_loss", train), Line("PD MLM loss", "pd_mlm_loss", train)]
    loss += [Line("held-out loss", "eval/loss", evals, dashed=True)]
    out = [Panel("loss", tuple(line for line in loss if line.key in train_keys + eval_keys), log=True,
                 boundaries=bounds)]
    held_out = [Line(f"held-out {k.upper()} accuracy", f"eval/{k}_accuracy", evals, dashed=True) for k in ("mlm", "nsp")]
    held_out += [Line("MLM accuracy", "mlm_accuracy", train)]
    out.append(Panel("accuracy (the teacher's heads in transfer)",
                     tuple(line for line in held_out if line.key in train_keys + eval_keys)))
    for name, title in DISTANCES:
        layers = _layers(train, name)
        if layers:
            out.append(Panel(f"{title} distance to the teacher layer, by layer", boundaries=bounds,
                             heat=_heat(train, lambda i, n=name: f"layer_{i}/{n}", layers, log=True)))
    layers = sorted({int(m.group(1)) for k in train_keys if (m := _MULTIPLIER.match(k))})
    if layers and "learning_rate" in train_keys:
        def effective(record, key):
            rate, multiplier = record.get("learning_rate"), record.get(key)
            return None if rate is None or multiplier is None else rate * multiplier
        title = "effective learning rate (base x layer multiplier)"
        if len(layers) <= MAX_SERIES:
            lines = tuple(Line(f"layer {i}", f"lr_multiplier/layer_{i}", train, times="learning_rate")
                          for i in layers)
            out.append(Panel(title, lines, boundaries=bounds, stepwise=True))
        else:
            out.append(Panel(title + ", by layer", boundaries=bounds,
                             heat=_heat(train, lambda i: f"lr_multiplier/layer_{i}", layers, False, effective)))
    return [p for p in out if p.lines or p.heat] + _throughput(train)


# Stage.curves(config) names one of these.
LAYOUTS: dict[str, Callable[[list[dict], list[dict]], list[Panel]]] = {
    "standard": standard_panels,
    "layer_transfer": layer_transfer_panels,
}


def recorded_layout(workdir: str) -> str:
    """The layout the run's stage chooses for its recorded config (`config.json`); standard without one."""
    from mobilebert_jax import experiment_config, stages

    config = experiment_config.read_recorded(workdir)
    if config is None:
        return "standard"
    return stages.lookup(config.get("stage", "")).curves(config)


def figure_pixels(n_panels: int) -> tuple[int, int]:
    """(width, height) in pixels of the PNG for `n_panels` panels (two a row)."""
    rows = max(1, math.ceil(n_panels / 2))
    return int(2 * PANEL_INCHES[0] * DPI), int(rows * PANEL_INCHES[1] * DPI)


def plot_run(workdir: str, out: Optional[str] = None, title: str = "", layout: Optional[str] = None) -> str:
    """Draws the run in `workdir` to `out` (default `<workdir>/curves.png`) with `layout` (default: the one its
    recorded config's stage chooses); returns the path written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.colors
    import matplotlib.pyplot as plt

    train, evals = read_metrics(workdir)
    layout = layout or recorded_layout(workdir)
    if layout not in LAYOUTS:
        raise DataError(f"curves layout {layout!r}: choose one of {sorted(LAYOUTS)}")
    chosen = LAYOUTS[layout](train, evals)
    n = len(chosen)
    if n == 0:
        raise DataError(f"{epath.Path(workdir) / 'metrics.jsonl'}: no scalar to plot")
    width, height = figure_pixels(n)
    fig, axes = plt.subplots(max(1, math.ceil(n / 2)), 2, figsize=(width / DPI, height / DPI), dpi=DPI,
                             squeeze=False)
    flat = list(axes.flat)
    for ax, panel in zip(flat, chosen):
        if panel.heat is not None:
            _draw_heat(fig, ax, panel.heat, matplotlib.colors)
        spans: list[float] = []
        for line in panel.lines[:MAX_SERIES]:
            steps, values = series(line.records, line.key, line.times)
            ax.plot(steps, values, label=line.label, linestyle="--" if line.dashed else "-",
                    marker="o" if line.dashed and len(steps) < 30 else None, linewidth=1.2, markersize=4,
                    drawstyle="steps-pre" if panel.stepwise else "default")
            spans.extend(v for v in values if v > 0)
        for step in panel.boundaries:
            ax.axvline(step, color="white" if panel.heat else "grey", linestyle="--", linewidth=0.8)
        if panel.log and spans and max(spans) > 20 * min(spans):  # a narrow range reads better on a linear axis
            ax.set_yscale("log")
        ax.set_title(panel.title, fontsize=10)
        if len(panel.lines) > 1:
            # Below the panel, never over the data.
            ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=min(len(panel.lines), 4),
                      frameon=False)
        ax.set_xlabel("step", fontsize=8)
        if panel.heat is None:
            ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
    for ax in flat[n:]:
        ax.set_axis_off()
    fig.suptitle(title or str(workdir), fontsize=11)
    fig.tight_layout()
    path = epath.Path(out) if out else epath.Path(workdir) / CURVES_PNG
    with path.open("wb") as f:
        fig.savefig(f, format="png", dpi=DPI)
    plt.close(fig)
    return str(path)


def _draw_heat(fig, ax, heat: HeatMap, colors) -> None:
    """Layers up, steps across; each logged step's column reaches back to the previous one."""
    import numpy as np

    values = np.ma.masked_invalid(np.asarray(heat.rows, dtype=float))
    if heat.log:  # blank, not -inf: a progressive step logs 0 for a layer above its phase, which it never ran
        values = np.ma.masked_less_equal(values, 0)
    steps = np.asarray(heat.steps, dtype=float)
    first = steps[0] - (steps[1] - steps[0] if len(steps) > 1 else 1.0)
    edges = np.concatenate([[first], steps])
    rows = np.arange(values.shape[0] + 1) - 0.5
    norm = None
    if heat.log and values.count():
        norm = colors.LogNorm(vmin=values.min(), vmax=values.max())
    mesh = ax.pcolormesh(edges, rows, values, cmap="viridis", norm=norm, shading="flat")
    fig.colorbar(mesh, ax=ax, pad=0.01).ax.tick_params(labelsize=7)
    ax.set_ylabel("layer", fontsize=8)
    every = max(1, math.ceil(values.shape[0] / 12))
    ax.set_yticks(range(0, values.shape[0], every))


def main(argv: list[str]) -> None:
    from absl import flags

    from mobilebert_jax import cli

    if len(argv) != 2:
        cli.fatal("usage", f"expected one WORKDIR, got {argv[1:] or 'none'} (python -m mobilebert_jax.plot WORKDIR "
                           "[--out=FILE.png])")
    if flags.FLAGS.out is not None:  # the default, WORKDIR/curves.png, is the plot the run itself writes
        from mobilebert_jax import output_paths

        output_paths.claim_files([flags.FLAGS.out], "--out", flags.FLAGS.overwrite)
    print(plot_run(argv[1], flags.FLAGS.out))


if __name__ == "__main__":
    from absl import flags

    from mobilebert_jax import cli

    flags.DEFINE_string("out", None, "the PNG to write (default: WORKDIR/curves.png); never an existing file nor one "
                                     "inside a training workdir")
    flags.DEFINE_bool("overwrite", False, "write --out over an existing file")
    cli.run_absl(main)
