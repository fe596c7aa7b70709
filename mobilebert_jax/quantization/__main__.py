"""Quantize a fine-tuned GLUE run to int8 and score it next to float on the same dev set.

    python -m mobilebert_jax.quantization --workdir=runs/sst2 [--calibration_examples=300] [--method=minmax]

Calibrates on `--calibration_examples` training examples (seeded draw), writes
`<workdir>/eval/int8.json` and prints it.
"""

from __future__ import annotations

import dataclasses
import json
import os

from absl import flags

from mobilebert_jax import cli, storage
from mobilebert_jax.errors import ConfigError

from mobilebert_jax.data.tokenizers import load_tokenizer
from mobilebert_jax.quantization.compare import calibration_rows, compare_glue
from mobilebert_jax.quantization.ptq import PTQConfig
from mobilebert_jax.finetune import evaluate, stage as finetune_stage, glue

flags.DEFINE_string("workdir", None, "a GLUE fine-tuning run (experiments/finetune_glue.py)", required=True)
flags.DEFINE_integer("step", None, "checkpoint step (default: latest)")
flags.DEFINE_integer("calibration_examples", 300, "training examples the activation ranges come from")
flags.DEFINE_enum("method", "minmax", ["minmax", "percentile"], "activation range calibration")
flags.DEFINE_float("percentile", 99.99, "with --method=percentile")
flags.DEFINE_bool("per_channel_streams", True, "one scale per channel for inputs read off the residual streams "
                                               "(False: one scale per tensor everywhere, the naive baseline)")
flags.DEFINE_bool("weights_only", False, "int8 weights, float activations")
flags.DEFINE_integer("batch_size", 64, "evaluation batch size")
FLAGS = flags.FLAGS


def main(argv) -> None:
    del argv
    cli.log_libraries_to(FLAGS.workdir)
    run = evaluate.load_run(FLAGS.workdir, FLAGS.step)
    config, model, params = run.config, run.model, run.params
    if config.stage != "glue_finetuning":
        raise ConfigError(f"{FLAGS.workdir}/config.json: stage {config.stage!r}; only GLUE runs are compared here")
    task = glue.get_task(config.task)
    tokenizer = load_tokenizer(run.tokenizer)
    seq_len = config.data.max_seq_length
    train = finetune_stage.glue_examples(config, task, "train")
    rows = calibration_rows(len(train), FLAGS.calibration_examples, seed=config.seed)
    calibration = glue.glue_features(task, [train[i] for i in rows], tokenizer, seq_len)
    dev = glue.glue_features(task, finetune_stage.glue_examples(config, task, task.eval_splits[0]), tokenizer, seq_len)
    ptq = PTQConfig(activations=not FLAGS.weights_only,
                    per_channel_input_axes=PTQConfig().per_channel_input_axes if FLAGS.per_channel_streams else ())
    report = compare_glue(model, params, task, calibration, dev, config=ptq, method=FLAGS.method,
                          percentile=FLAGS.percentile, batch_size=FLAGS.batch_size)
    report["ptq_config"] = dataclasses.asdict(ptq)
    storage.makedirs(os.path.join(FLAGS.workdir, "eval"))
    storage.path(FLAGS.workdir, "eval", "int8.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    cli.run_absl(main)
