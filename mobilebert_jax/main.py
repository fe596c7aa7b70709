"""Runs a training stage, or without --config the small end-to-end pipeline.

    python -m mobilebert_jax.main --config=experiments/STAGE.py[:arg] --workdir=DIR [--config.FIELD=VALUE ...]
    python -m mobilebert_jax.main [--workdir=runs/pipeline] [--teacher_steps=N ...]     # the README's main job
    mobilebert-jax ...                                                                      # the same, installed

--config=experiments/STAGE.py[:arg]   the experiment config (teacher_ib_bert_large, distill_*, finetune_*; `:smoke`
                                      for a CPU-sized run); config.stage picks the stage.
--config.FIELD.SUB=VALUE              override any field of it (a field that does not exist is an error naming it).

Without --config, runs the embedded default: the whole MobileBERT recipe at small scale on the
bundled Python-docs corpus (teacher, progressive transfer, PD, a scratch baseline, the held-out
table and the plots; experiments/pipeline.py, installed as mobilebert_jax.experiments.pipeline) in
runs/pipeline. Then each field of its `Scale` (experiments/pipeline.py: seq_len, layers, teacher_steps, phase_steps,
pd_steps, ...) is a flag too: --teacher_steps=2500 --seq_len=128 --layers=6.

Each run writes to its workdir: checkpoints/, metrics.jsonl, tensorboard/, config.py (the resolved config),
command.txt (this command line and the git revision), log.txt (library logs) and curves.png.
"""

from __future__ import annotations

import os

import jax
from absl import flags

from mobilebert_jax import cli, experiment_config, multihost, preemption, stages
from mobilebert_jax.errors import ConfigError

DEFAULT_WORKDIR = os.path.join("runs", "pipeline")

flags.DEFINE_string("workdir", None, "where checkpoints, logs and the resolved config go (required with --config; "
                                     f"{DEFAULT_WORKDIR} for the embedded default pipeline)")
flags.DEFINE_string("coordinator_address", None, "multi-process CPU/GPU clusters: host:port of process 0, or "
                                                 "$JAX_COORDINATOR_ADDRESS (Cloud TPU VMs find it themselves)")
flags.DEFINE_integer("num_processes", None, "multi-process clusters: how many processes, or $JAX_NUM_PROCESSES")
flags.DEFINE_integer("process_id", None, "multi-process clusters: this process's index, or $JAX_PROCESS_ID")
FLAGS = flags.FLAGS


def _parse(argv: list[str]):
    """(config, rest), or (None, rest) for the default pipeline when no --config is given."""
    from mobilebert_jax.experiments import pipeline

    if not any(a == "--config" or a.startswith("--config") for a in argv[1:]):
        pipeline.define_scale_flags()  # only then: a --config run has no pipeline flags
        return None, FLAGS(argv)
    given = sorted({a[2:].split("=")[0] for a in argv[1:] if a.startswith("--")} & pipeline.scale_fields())
    if given:
        raise ConfigError(f"{', '.join('--' + k for k in given)}: pipeline settings, for the default run without "
                          "--config; a --config run takes --config.FIELD=VALUE")
    return experiment_config.absl_flags_parser(argv)


def main(parsed) -> None:
    config, _ = parsed
    if config is None:
        from mobilebert_jax.experiments import pipeline

        workdir = FLAGS.workdir or DEFAULT_WORKDIR
        cli.log_libraries_to(workdir)
        pipeline.run(workdir, pipeline.default_scale(**pipeline.scale_overrides()))
        preemption.exit_if_stopped()  # a stage stopped early: never exit 0 before the end
        return
    if FLAGS.workdir is None:
        raise ConfigError("--workdir is required with --config")
    cli.log_libraries_to(FLAGS.workdir)
    # Before anything touches a JAX backend; on a Cloud TPU VM this happens without any flag.
    how = multihost.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    if jax.process_index() == 0 and jax.process_count() > 1:
        print(f"distributed: {how}", flush=True)
    from mobilebert_jax.train.trainer import train

    train(config, FLAGS.workdir, stages.lookup(config.stage))
    preemption.exit_if_stopped()  # a run stopped before config.total_steps never exits 0


def run() -> None:
    """Console-script entry point (`mobilebert-jax`)."""
    preemption.install()  # from here on a SIGTERM stops the run cleanly, even before training starts
    cli.run_absl(main, flags_parser=_parse, doc=__doc__)


if __name__ == "__main__":
    run()
