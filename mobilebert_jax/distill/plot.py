"""A PNG of the per-layer transfer losses of a distillation run, from its metrics.jsonl.

    python -m mobilebert_jax.distill.plot WORKDIR [OUT.png]

One line per student layer (the weighted loss `layer_{i}/loss` the step
optimized); in a progressive run each layer's line lives in its own stage,
whose boundaries are drawn as dotted lines.
"""

from __future__ import annotations

import json
import os
import re
import sys

_LAYER_LOSS = re.compile(r"^layer_(\d+)/loss$")


def read_metrics(workdir: str) -> list[dict]:
    """The training records of `workdir/metrics.jsonl` (evaluation records left out), in step order."""
    path = os.path.join(workdir, "metrics.jsonl")
    records = []
    with open(path) as f:
        for line in f:
            record = json.loads(line)
            if not any(k.startswith("eval/") for k in record):
                records.append(record)
    # A resumed run appends; keep the last record of each step.
    by_step = {r["step"]: r for r in records}
    return [by_step[s] for s in sorted(by_step)]


def layer_loss_series(records: list[dict]) -> dict[int, tuple[list[int], list[float]]]:
    """layer -> (steps, losses), only where the layer's loss was on (non-zero)."""
    series: dict[int, tuple[list[int], list[float]]] = {}
    for r in records:
        for key, value in r.items():
            m = _LAYER_LOSS.match(key)
            if m and value > 0:
                steps, values = series.setdefault(int(m.group(1)), ([], []))
                steps.append(r["step"])
                values.append(value)
    return dict(sorted(series.items()))


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


def plot_transfer_losses(workdir: str, out_path: str, title: str = "") -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(workdir)
    series = layer_loss_series(records)
    if not series:
        raise ValueError(f"{workdir}/metrics.jsonl has no non-zero layer_<i>/loss values: not a layer-transfer run")
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=120)
    cmap = plt.get_cmap("viridis", max(len(series), 2))
    for n, (layer, (steps, values)) in enumerate(series.items()):
        ax.plot(steps, values, color=cmap(n), label=f"layer {layer}", linewidth=1.4)
    for step in stage_boundaries(records):
        ax.axvline(step, color="grey", linestyle=":", linewidth=0.8)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("weighted layer loss (100 FMT + 5000 mean + 5 var + AT)")
    ax.set_title(title or f"per-layer transfer losses: {workdir}")
    ax.legend(fontsize=8, ncol=2 if len(series) > 6 else 1)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_path)
    plt.close(fig)
    return out_path


def main(argv: list[str]) -> None:
    if len(argv) not in (2, 3):
        raise SystemExit("usage: python -m mobilebert_jax.distill.plot WORKDIR [OUT.png]")
    out = argv[2] if len(argv) == 3 else os.path.join(argv[1], "transfer_losses.png")
    print(plot_transfer_losses(argv[1], out))


if __name__ == "__main__":
    main(sys.argv)
