"""Official metrics and prediction files of a finished fine-tuning run, from its latest (or a given) checkpoint.

    python -m mobilebert_jax.evaluate --workdir=runs/rte [--step=N] [--batch_size=64]

The run's stage scores it (`train.stage.Scoring.evaluate`; GLUE and SQuAD: finetune/evaluate.py). Everything lands
in `<workdir>/eval/` next to `metrics.json`.
"""

from __future__ import annotations

import json
import os
from typing import Optional

from absl import flags

from mobilebert_jax import finished_run, storage


def evaluate_run(workdir: str, step: Optional[int] = None, batch_size: int = 64) -> dict:
    run = finished_run.load(workdir, step)
    output_dir = os.path.join(workdir, "eval")
    storage.path(output_dir).mkdir(parents=True, exist_ok=True)
    report = finished_run.scoring(run.config, f"--workdir={workdir!r}").evaluate(run, output_dir, batch_size)
    storage.path(output_dir, "metrics.json").write_text(json.dumps(report, indent=2))
    return report


def main(argv) -> None:
    from mobilebert_jax import cli

    del argv
    cli.log_libraries_to(flags.FLAGS.workdir)
    print(json.dumps(evaluate_run(flags.FLAGS.workdir, flags.FLAGS.step, flags.FLAGS.batch_size), indent=2))


if __name__ == "__main__":
    # Defined here, not at import: tests import evaluate_run next to other commands' flags.
    flags.DEFINE_string("workdir", None, "the fine-tuning run's workdir", required=True)
    flags.DEFINE_integer("step", None, "checkpoint step (default: latest)")
    flags.DEFINE_integer("batch_size", 64, "evaluation batch size", lower_bound=1)
    from mobilebert_jax import cli

    cli.run_absl(main)
