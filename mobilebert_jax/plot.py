"""One PNG of the curves a run logged, from its metrics.jsonl: the one way this project plots a run.

    python -m mobilebert_jax.plot WORKDIR [--out=WORKDIR/curves.png]

Panels, each drawn when the run logged it: loss (training; evaluation dashed), accuracy and the other evaluation
metrics, learning rate, throughput (tokens/s, else examples/s) and, for a distillation run with layer transfer,
the per-layer losses `layer_{i}/loss` on a log scale with the progressive stages' boundaries dotted. The trainer
writes `<workdir>/curves.png` at the end of every run, so every stage of the pipeline has one.
"""

from __future__ import annotations

import math
import re
from typing import Optional

from etils import epath

from mobilebert_jax import jsonl
from mobilebert_jax.errors import DataError

CURVES_PNG = "curves.png"
PANEL_INCHES = (6.0, 3.5)  # one panel; two panels a row
DPI = 100
_LAYER_LOSS = re.compile(r"^layer_(\d+)/loss$")
_NOT_CURVES = {"step", "time", "stage"}


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
        target = evals if any(k.startswith("eval/") for k in record) else train
        target[step] = {**target.get(step, {}), **record}
    return [train[s] for s in sorted(train)], [evals[s] for s in sorted(evals)]


def series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of `key` where it was logged and finite."""
    steps, values = [], []
    for r in records:
        v = r.get(key)
        if isinstance(v, (int, float)) and math.isfinite(v):
            steps.append(r["step"])
            values.append(float(v))
    return steps, values


def layer_loss_series(records: list[dict]) -> dict[int, tuple[list[int], list[float]]]:
    """layer -> (steps, losses), only where the layer's loss was on (non-zero)."""
    out: dict[int, tuple[list[int], list[float]]] = {}
    for r in records:
        for key, value in r.items():
            m = _LAYER_LOSS.match(key)
            if m and isinstance(value, (int, float)) and value > 0:
                steps, values = out.setdefault(int(m.group(1)), ([], []))
                steps.append(r["step"])
                values.append(value)
    return dict(sorted(out.items()))


def stage_boundaries(records: list[dict]) -> list[int]:
    """The last logged step of each stage that another follows (exact when log_every divides stage_steps)."""
    out, last, last_step = [], None, None
    for r in records:
        stage = r.get("stage")
        if stage is None:
            continue
        if last is not None and stage != last:
            out.append(last_step)
        last, last_step = stage, r["step"]
    return out


def panels(train: list[dict], evals: list[dict]) -> list[tuple[str, list[tuple[str, str, list[dict]]], bool]]:
    """[(title, [(label, key, records)], log scale)] for the panels this run has data for."""
    train_keys = sorted({k for r in train for k in r} - _NOT_CURVES)
    eval_keys = sorted({k for r in evals for k in r} - _NOT_CURVES)
    layer = [k for k in train_keys if _LAYER_LOSS.match(k) or k.startswith("layer_")]
    losses = [(k, k, train) for k in train_keys if k.endswith("loss") and k not in layer]
    losses += [(k, k, evals) for k in eval_keys if k.endswith("loss")]
    scores = [(k, k, train) for k in train_keys if "accuracy" in k and k not in layer]
    scores += [(k, k, evals) for k in eval_keys if not k.endswith("loss")]
    rate = "tokens_per_second" if "tokens_per_second" in train_keys else "examples_per_second"
    lr = [k for k in ("learning_rate", "lr") if k in train_keys][:1]
    out = [("loss", losses, False), ("accuracy and evaluation metrics", scores, False),
           ("learning rate", [(k, k, train) for k in lr], False),
           (rate.replace("_", " "), [(rate, rate, train)] if rate in train_keys else [], False)]
    return [p for p in out if p[1]]


def figure_pixels(n_panels: int) -> tuple[int, int]:
    """(width, height) in pixels of the PNG for `n_panels` panels (two a row)."""
    rows = max(1, math.ceil(n_panels / 2))
    return int(2 * PANEL_INCHES[0] * DPI), int(rows * PANEL_INCHES[1] * DPI)


def plot_run(workdir: str, out: Optional[str] = None, title: str = "") -> str:
    """Draws the run in `workdir` to `out` (default `<workdir>/curves.png`); returns the path written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train, evals = read_metrics(workdir)
    chosen = panels(train, evals)
    layers = layer_loss_series(train)
    n = len(chosen) + (1 if layers else 0)
    if n == 0:
        raise DataError(f"{epath.Path(workdir) / 'metrics.jsonl'}: no scalar to plot")
    width, height = figure_pixels(n)
    fig, axes = plt.subplots(max(1, math.ceil(n / 2)), 2, figsize=(width / DPI, height / DPI), dpi=DPI,
                             squeeze=False)
    flat = list(axes.flat)
    for ax, (name, lines, log) in zip(flat, chosen):
        for label, key, records in lines:
            steps, values = series(records, key)
            ax.plot(steps, values, label=label, linestyle="--" if key.startswith("eval/") else "-",
                    marker="o" if key.startswith("eval/") and len(steps) < 30 else None, linewidth=1.2)
        ax.set_title(name, fontsize=10)
        if len(lines) > 1:
            ax.legend(fontsize=7)
    if layers:
        ax = flat[len(chosen)]
        cmap = plt.get_cmap("viridis", max(len(layers), 2))
        for i, (layer, (steps, values)) in enumerate(layers.items()):
            ax.plot(steps, values, color=cmap(i), label=f"layer {layer}", linewidth=1.2)
        for step in stage_boundaries(train):
            ax.axvline(step, color="grey", linestyle=":", linewidth=0.8)
        ax.set_yscale("log")
        ax.set_title("per-layer transfer loss (weighted, scaled)", fontsize=10)
        ax.legend(fontsize=7, ncol=2 if len(layers) > 6 else 1)
    for ax in flat[:n]:
        ax.set_xlabel("step", fontsize=8)
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


def main(argv: list[str]) -> None:
    from absl import flags

    from mobilebert_jax import cli

    if len(argv) != 2:
        cli.fatal("usage", f"expected one WORKDIR, got {argv[1:] or 'none'} (python -m mobilebert_jax.plot WORKDIR "
                           "[--out=FILE.png])")
    print(plot_run(argv[1], flags.FLAGS.out))


if __name__ == "__main__":
    from absl import flags

    from mobilebert_jax import cli

    flags.DEFINE_string("out", None, "the PNG to write (default: WORKDIR/curves.png)")
    cli.run_absl(main)
