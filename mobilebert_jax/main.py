"""Runs a training stage: python -m mobilebert_jax.main --config=experiments/X.py[:arg] --workdir=DIR [--config.a.b=v]

Without --config, runs the embedded default: the whole MobileBERT recipe at small scale on the
bundled Python-docs corpus (teacher, progressive transfer, PD, a scratch baseline, the held-out
table and the transfer-loss plot; mobilebert_jax/distill/pipeline.py) in runs/pipeline. Its
`Scale` fields are flags there (--teacher_steps=..., --seq_len=...).
"""

from __future__ import annotations

import os
import sys

import jax
from absl import app, flags

from mobilebert_jax import experiment_config, multihost
from mobilebert_jax.config import ConfigError
from mobilebert_jax.distill import pipeline

DEFAULT_WORKDIR = os.path.join("runs", "pipeline")

flags.DEFINE_string("workdir", None, "where checkpoints, logs and the resolved config go (required with --config; "
                                     f"{DEFAULT_WORKDIR} for the embedded default pipeline)")
flags.DEFINE_string("coordinator_address", None, "multi-process CPU/GPU clusters: host:port of process 0, or "
                                                 "$JAX_COORDINATOR_ADDRESS (Cloud TPU VMs find it themselves)")
flags.DEFINE_integer("num_processes", None, "multi-process clusters: how many processes, or $JAX_NUM_PROCESSES")
flags.DEFINE_integer("process_id", None, "multi-process clusters: this process's index, or $JAX_PROCESS_ID")
pipeline.define_scale_flags()
FLAGS = flags.FLAGS

STAGES = {
    "teacher_pretraining": "mobilebert_jax.train.pretraining:build_pretraining_task",
    "pretraining": "mobilebert_jax.train.pretraining:build_pretraining_task",
    "distillation": "mobilebert_jax.distill.task:build_distillation_task",
    "glue_finetuning": "mobilebert_jax.tasks.finetuning:build_glue_task",
    "squad_finetuning": "mobilebert_jax.tasks.finetuning:build_squad_task",
}


def task_builder(stage: str):
    if stage not in STAGES:
        raise ConfigError(f"config.stage={stage!r}: choose one of {sorted(STAGES)}")
    module, name = STAGES[stage].split(":")
    return getattr(__import__(module, fromlist=[name]), name)


def _parse(argv: list[str]):
    """(config, rest), or (None, rest) for the default pipeline when no --config is given."""
    if not any(a == "--config" or a.startswith("--config") for a in argv[1:]):
        return None, FLAGS(argv)
    return experiment_config.absl_flags_parser(argv)


def _fatal(kind: str, error: Exception) -> None:
    print(f"FATAL {kind} error: {error}", file=sys.stderr)
    sys.exit(1)


def main(parsed) -> None:
    config, _ = parsed
    from mobilebert_jax.data.errors import DataError

    scale = pipeline.scale_overrides()
    if config is None:
        try:
            pipeline.run(FLAGS.workdir or DEFAULT_WORKDIR, pipeline.Scale(**scale))
        except (ConfigError, DataError) as e:
            _fatal("config" if isinstance(e, ConfigError) else "data", e)
        return
    if scale:
        _fatal("config", ConfigError(f"{', '.join('--' + k for k in sorted(scale))}: pipeline settings, for the "
                                     "default run without --config; a --config run takes --config.FIELD=VALUE"))
    if FLAGS.workdir is None:
        _fatal("config", ConfigError("--workdir is required with --config"))
    try:
        # Before anything touches a JAX backend; on a Cloud TPU VM this happens without any flag.
        how = multihost.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    except ConfigError as e:
        _fatal("config", e)
    if jax.process_index() == 0 and jax.process_count() > 1:
        print(f"distributed: {how}", flush=True)
    from mobilebert_jax.train.trainer import NonFiniteLossError, train

    try:
        train(config, FLAGS.workdir, task_builder(config.stage))
    except ConfigError as e:
        _fatal("config", e)
    except DataError as e:
        _fatal("data", e)
    except NonFiniteLossError as e:
        _fatal("training", e)


def run() -> None:
    """Console-script entry point (`mobilebert-jax`)."""
    app.run(main, flags_parser=_parse)


if __name__ == "__main__":
    run()
