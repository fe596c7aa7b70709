"""Quantize a fine-tuned run to int8 and score it next to float on the same held-out set (its stage's metrics).

    python -m mobilebert_jax.quantization --workdir=runs/sst2 [--calibration_examples=300] [--method=minmax]

Calibrates on `--calibration_examples` training examples (seeded draw), writes
`<workdir>/eval/int8.json` and prints it.
"""

from __future__ import annotations

import dataclasses
import json

from absl import flags

from mobilebert_jax import cli, finished_run, storage
from mobilebert_jax.quantization.compare import compare
from mobilebert_jax.quantization.ptq import PTQConfig

flags.DEFINE_string("workdir", None, "a fine-tuning run (experiments/finetune_*.py)", required=True)
flags.DEFINE_integer("step", None, "checkpoint step (default: latest)")
flags.DEFINE_integer("calibration_examples", 300, "training examples the activation ranges come from")
flags.DEFINE_enum("method", "minmax", ["minmax", "percentile"], "activation range calibration")
flags.DEFINE_float("percentile", 99.99, "with --method=percentile")
flags.DEFINE_bool("per_channel_streams", True, "one scale per channel for inputs read off the residual streams "
                                               "(False: one scale per tensor everywhere, the naive baseline)")
flags.DEFINE_bool("weights_only", False, "int8 weights, float activations")
flags.DEFINE_integer("batch_size", 64, "evaluation batch size", lower_bound=1)
FLAGS = flags.FLAGS


def main(argv) -> None:
    del argv
    cli.log_libraries_to(FLAGS.workdir)
    run = finished_run.load(FLAGS.workdir, FLAGS.step)
    scoring = finished_run.scoring(run.config, f"--workdir={FLAGS.workdir!r}")
    calibration = scoring.calibration(run, FLAGS.calibration_examples, run.config.data.max_seq_length)
    ptq = PTQConfig(activations=not FLAGS.weights_only,
                    per_channel_input_axes=PTQConfig().per_channel_input_axes if FLAGS.per_channel_streams else ())
    report = compare(run.model, run.params, scoring.held_out(run), calibration, config=ptq, method=FLAGS.method,
                     percentile=FLAGS.percentile, batch_size=FLAGS.batch_size)
    report["ptq_config"] = dataclasses.asdict(ptq)
    storage.path(FLAGS.workdir, "eval").mkdir(parents=True, exist_ok=True)
    storage.path(FLAGS.workdir, "eval", "int8.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    cli.run_absl(main)
