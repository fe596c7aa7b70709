"""Runs a training stage: python -m mobilebert_jax.main --config=experiments/X.py[:arg] --workdir=DIR [--config.a.b=v]

Without --config, runs the embedded default (the smoke teacher pretraining on the
bundled Python-docs corpus) in runs/teacher_smoke.
"""

from __future__ import annotations

import os
import sys

import jax
from absl import app, flags

from mobilebert_jax import experiment_config, multihost
from mobilebert_jax.config import ConfigError

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIG = os.path.join(REPO_ROOT, "experiments", "teacher_ib_bert_large.py") + ":smoke"
DEFAULT_WORKDIR = os.path.join("runs", "teacher_smoke")

flags.DEFINE_string("workdir", None, "where checkpoints, logs and the resolved config go (default: "
                                     f"{DEFAULT_WORKDIR} for the embedded default)")
flags.DEFINE_string("coordinator_address", None, "multi-process CPU/GPU clusters: host:port of process 0, or "
                                                 "$JAX_COORDINATOR_ADDRESS (Cloud TPU VMs find it themselves)")
flags.DEFINE_integer("num_processes", None, "multi-process clusters: how many processes, or $JAX_NUM_PROCESSES")
flags.DEFINE_integer("process_id", None, "multi-process clusters: this process's index, or $JAX_PROCESS_ID")
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
    if not any(a == "--config" or a.startswith("--config=") for a in argv[1:]):
        argv = [argv[0], f"--config={DEFAULT_CONFIG}", *argv[1:]]
    return experiment_config.absl_flags_parser(argv)


def main(parsed) -> None:
    config, _ = parsed
    try:
        # Before anything touches a JAX backend; on a Cloud TPU VM this happens without any flag.
        how = multihost.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    except ConfigError as e:
        print(f"FATAL config error: {e}", file=sys.stderr)
        sys.exit(1)
    if jax.process_index() == 0 and jax.process_count() > 1:
        print(f"distributed: {how}", flush=True)
    workdir = FLAGS.workdir or DEFAULT_WORKDIR
    from mobilebert_jax.data.errors import DataError
    from mobilebert_jax.train.trainer import train

    try:
        train(config, workdir, task_builder(config.stage))
    except ConfigError as e:
        print(f"FATAL config error: {e}", file=sys.stderr)
        sys.exit(1)
    except DataError as e:
        print(f"FATAL data error: {e}", file=sys.stderr)
        sys.exit(1)


def run() -> None:
    """Console-script entry point (`mobilebert-jax`)."""
    app.run(main, flags_parser=_parse)


if __name__ == "__main__":
    run()
