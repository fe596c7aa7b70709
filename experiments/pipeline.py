"""The README's main job: the whole MobileBERT recipe at small scale, in one command, on the embedded corpus.

    python -m mobilebert_jax.main [--workdir=runs/pipeline] [--teacher_steps=N ... any Scale field]

1. prepare the data (the bundled Python docs, SentencePiece vocabulary, held-out split);
2. pretrain a small IB-BERT teacher (MLM + NSP);
3. progressive knowledge transfer into a MobileBERT-shaped student, one phase per layer;
4. pretraining distillation (PD) of that student;
5. train the same student from scratch (MLM + NSP) for as many steps as 3 and 4 together;
6. score the teacher, the distilled student and the scratch student on the same held-out batches,
   print the table, and write `results.md` and `results.json` to the workdir.

Every stage is an ordinary trainer run in its own subdirectory (checkpoints, TensorBoard, metrics.jsonl and
curves.png, which in the progressive run shows every layer's distance to its teacher layer by step), so rerunning the command continues an interrupted pipeline where it stopped. Each stage's config is
the smoke experiment of that stage (experiments/*.py:smoke) at this job's size: `SCALE` (the fields of `Scale`,
each a flag of main without --config). The values are chosen for about ten minutes on two free CPU cores;
docs/distillation.md says why each one is what it is. The ablation (benchmarks/ablation_small.py) builds its
stages here too. This file installs with the package (mobilebert_jax.experiments.pipeline), so the installed
command runs the job without a checkout.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import time
from typing import Any

import jax
import ml_collections
from absl import flags

from mobilebert_jax import experiment_config, flops, model_source, plot, preemption, storage
from mobilebert_jax.distill import strategies
from mobilebert_jax.distill.evaluate import eval_batches, held_out_metrics
from mobilebert_jax.errors import ConfigError
from mobilebert_jax.train.stage import Stage

HERE = os.path.dirname(os.path.abspath(__file__))

SCALE = dict(
    seq_len=64,
    max_predictions=10,  # 15% of 64
    held_out_fraction=0.05,  # about 400 held-out sequences
    batch_size=32,
    layers=4,  # teacher and student
    # The teacher smoke model's inner widths (256 / 512) learned no faster per step at this length and cost
    # three times as much; at 128 the "inverted" bottleneck is as wide as the 128-d inter-block features.
    teacher_intra_bottleneck_size=128,
    teacher_intermediate_size=256,
    teacher_steps=1000,
    phase_steps=100,  # progressive: layers x phase_steps transfer steps
    pd_steps=400,
    optimizer="adamw",
    teacher_lr=1e-3,
    transfer_lr=1e-3,  # the base rate; progressive multiplies it by 3 bg(t) at the current layer
    student_lr=1e-3,  # PD and the scratch student
    eval_batch_size=64,
)


@dataclasses.dataclass(frozen=True)
class Scale:
    """Everything the small pipeline sets; the README run's values are `SCALE`."""

    seq_len: int
    max_predictions: int  # masked positions per sequence
    held_out_fraction: float  # of the documents, for the held-out table
    batch_size: int
    layers: int  # teacher and student
    teacher_intra_bottleneck_size: int
    teacher_intermediate_size: int
    teacher_steps: int
    phase_steps: int  # progressive: layers x phase_steps transfer steps
    pd_steps: int
    optimizer: str  # config.optimizer.name of every stage
    teacher_lr: float
    transfer_lr: float  # the base rate; progressive multiplies it by 3 bg(t) at the current layer
    student_lr: float  # PD and the scratch student
    eval_batch_size: int

    def __post_init__(self) -> None:
        # Named as the flags that set them, before any data work: a zero or negative count would
        # otherwise surface as a config error of one stage, after the earlier stages have run.
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, (int, float)) and not value > 0:
                raise ConfigError(f"--{field.name}={value}: must be positive")
        if not self.held_out_fraction < 1:
            raise ConfigError(f"--held_out_fraction={self.held_out_fraction}: must be below 1")
        if self.max_predictions > self.seq_len:
            raise ConfigError(f"--max_predictions={self.max_predictions} exceeds --seq_len={self.seq_len}")

    @property
    def transfer_steps(self) -> int:
        return self.layers * self.phase_steps

    @property
    def student_steps(self) -> int:
        return self.transfer_steps + self.pd_steps


def default_scale(**overrides: Any) -> Scale:
    """The README run's `Scale` (`SCALE`), with `overrides` (the flags given) in place."""
    return Scale(**{**SCALE, **overrides})


def _smoke_experiment(name: str) -> ml_collections.ConfigDict:
    c = experiment_config.load_experiment(os.path.join(HERE, name) + ":smoke")
    c.unlock()
    return c


def _data(c: ml_collections.ConfigDict, scale, data_dir: str) -> None:
    c.data.prepared_dir = data_dir
    c.data.max_seq_length = scale.seq_len
    c.data.max_predictions_per_seq = scale.max_predictions
    c.data.held_out_fraction = scale.held_out_fraction
    c.batch_size = scale.batch_size
    c.eval.batch_size = scale.eval_batch_size
    c.eval.num_batches = 2


def _optimizer(c: ml_collections.ConfigDict, scale, lr: float, total_steps: int, warmup: bool = True) -> None:
    c.optimizer.name = scale.optimizer
    c.optimizer.lr = lr
    # Adam's first steps without bias correction are tiny; at a few hundred steps that matters.
    c.optimizer.bias_correction = scale.optimizer == "adamw"
    if warmup:
        c.optimizer.schedule.kind = "warmup_linear_decay"
        c.optimizer.schedule.warmup_steps = max(1, total_steps // 20)
        c.optimizer.schedule.total_steps = total_steps
        c.optimizer.schedule.end_lr = 0.0


def _no_dropout(model: ml_collections.ConfigDict) -> None:
    # A few hundred steps over 250K tokens underfit; dropout would only slow every model down.
    model.hidden_dropout_prob = 0.0
    model.attention_probs_dropout_prob = 0.0


def teacher_config(scale, data_dir: str) -> ml_collections.ConfigDict:
    c = _smoke_experiment("teacher_ib_bert_large.py").copy_and_resolve_references()
    c.unlock()
    c.model.num_hidden_layers = scale.layers
    c.model.intra_bottleneck_size = scale.teacher_intra_bottleneck_size
    c.model.intermediate_size = scale.teacher_intermediate_size
    _no_dropout(c.model)
    c.model.max_position_embeddings = scale.seq_len
    c.total_steps = scale.teacher_steps
    c.log_every = 50
    c.eval.every_steps = scale.teacher_steps
    c.checkpoint.every_steps = 200
    _data(c, scale, data_dir)
    _optimizer(c, scale, scale.teacher_lr, scale.teacher_steps)
    return c


def student_model(teacher: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    distill_common = experiment_config.load_module(os.path.join(HERE, "distill_common.py"))
    student = distill_common.smoke_student_model(teacher)
    _no_dropout(student)
    return student


def distill_config(strategy: str, scale, teacher: ml_collections.ConfigDict, teacher_dir: str,
                   data_dir: str, student_init: str = "", **distill: Any) -> ml_collections.ConfigDict:
    """A distillation stage at this scale; `distill` overrides fields of config.distill (ablations)."""
    c = _smoke_experiment(f"distill_{strategy}.py")
    c.teacher_model = ml_collections.ConfigDict(teacher.to_dict())
    c.model = student_model(teacher)
    c.distill.teacher = teacher_dir
    c.distill.student_init = student_init
    c.distill.phase_steps = scale.phase_steps
    for k, v in distill.items():
        if k == "weights":
            c.distill.weights.update(v)
        else:
            c.distill[k] = v
    c.optimizer.groups = ml_collections.ConfigDict()
    c.optimizer.exclude = ()
    strategies.optimizer_settings(c, strategy, scale.layers)
    steps = {"progressive": scale.transfer_steps, "joint": scale.transfer_steps, "auxiliary": scale.student_steps,
             "pd": scale.pd_steps}[strategy]
    if strategy == "progressive":
        c.distill.last_phase = scale.layers - 1
        _optimizer(c, scale, scale.transfer_lr, steps, warmup=False)
    else:
        c.total_steps = steps
        _optimizer(c, scale, scale.transfer_lr if strategy == "joint" else scale.student_lr, steps)
    c.log_every = 20  # divides phase_steps (the plot's phase boundaries); about 25 lines a phase on screen
    c.eval.every_steps = scale.phase_steps
    c.checkpoint.every_steps = 200
    _data(c, scale, data_dir)
    return c


def scratch_config(scale, teacher: ml_collections.ConfigDict, data_dir: str) -> ml_collections.ConfigDict:
    """The student trained with plain MLM + NSP for as many steps as transfer and PD together."""
    c = teacher_config(scale, data_dir)
    c.stage = "pretraining"
    c.model = student_model(teacher)
    c.total_steps = scale.student_steps
    c.eval.every_steps = scale.student_steps
    _optimizer(c, scale, scale.student_lr, scale.student_steps)
    return c


def train_stage(name: str, config: ml_collections.ConfigDict, workdir: str, stage: Stage,
                timings: dict[str, float], resumed: list[str] | None = None) -> bool:
    """Trains (or resumes) one stage; False when a signal stopped it early, with its checkpoint saved.

    `resumed` gets `name` when the stage had already finished (the trainer's FINISHED marker), so trained nothing.

    The stages after it read its final model, so a caller stops there: the flag that stopped this stage stays set
    (the entry points install `preemption`'s handler first) and would stop each later stage before its first step.
    """
    from mobilebert_jax.train.trainer import FINISHED, train

    print(f"\n=== {name}: {workdir} ===", flush=True)
    if resumed is not None and storage.path(workdir, FINISHED).exists():
        resumed.append(name)
    start = time.monotonic()
    train(config, workdir, stage)
    timings[name] = time.monotonic() - start
    if preemption.STOP.is_set():
        print(f"stopped during {name} by a signal: its checkpoint is saved; rerun the same command to continue",
              flush=True)
        return False
    return True


def markdown_table(rows: list[dict]) -> str:
    lines = ["| model | backbone params | training steps | held-out MLM accuracy | held-out MLM loss | "
             "held-out NSP accuracy |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['params']:,} | {r['steps']} | {100 * r['mlm_accuracy']:.2f}% | "
                     f"{r['mlm_loss']:.3f} | {100 * r['nsp_accuracy']:.2f}% |")
    return "\n".join(lines)


def run(workdir: str, scale: Scale | None = None) -> list[dict]:
    """Every stage (each resumed where it stopped), then the table; [] when a signal stopped a stage.

    `scale`: None is the README run's (`default_scale()`).
    """
    from mobilebert_jax.distill.stage import DISTILLATION
    from mobilebert_jax.pretraining.stage import PRETRAINING

    scale = default_scale() if scale is None else scale

    started = time.monotonic()
    timings: dict[str, float] = {}
    resumed: list[str] = []
    data_dir = os.path.join(workdir, "data")
    dirs = {k: os.path.join(workdir, k) for k in ("teacher", "progressive", "pd", "scratch")}

    teacher_cfg = teacher_config(scale, data_dir)
    if not train_stage("teacher pretraining", teacher_cfg, dirs["teacher"], PRETRAINING, timings, resumed):
        return []
    progressive = distill_config("progressive", scale, teacher_cfg.model, dirs["teacher"], data_dir)
    if not train_stage("progressive knowledge transfer", progressive, dirs["progressive"], DISTILLATION,
                       timings, resumed):
        return []
    pd = distill_config("pd", scale, teacher_cfg.model, dirs["teacher"], data_dir,
                               student_init=dirs["progressive"])
    if not train_stage("pretraining distillation", pd, dirs["pd"], DISTILLATION, timings, resumed):
        return []
    scratch = scratch_config(scale, teacher_cfg.model, data_dir)
    if not train_stage("student from scratch", scratch, dirs["scratch"], PRETRAINING, timings, resumed):
        return []

    start = time.monotonic()
    batches = eval_batches(teacher_cfg.data, scale.eval_batch_size)
    rows = []
    for name, key, model, steps in (
            ("IB-BERT teacher", "teacher", teacher_cfg.model, scale.teacher_steps),
            ("MobileBERT after progressive transfer (teacher's heads)", "progressive", pd.model, scale.transfer_steps),
            ("MobileBERT distilled (progressive + PD)", "pd", pd.model, scale.student_steps),
            ("MobileBERT from scratch", "scratch", scratch.model, scale.student_steps)):
        source = model_source.open_source(dirs[key], f"the pipeline's {key} run")
        cfg, params = source.config, model_source.read(source)
        rows.append(dict(model=name, params=flops.parameter_count(cfg), steps=steps,
                         **held_out_metrics(cfg, params, batches)))
    timings["evaluation"] = time.monotonic() - start
    timings["total"] = time.monotonic() - started

    table = markdown_table(rows)
    distilled, scratch_row = rows[2], rows[3]
    margin = 100 * (distilled["mlm_accuracy"] - scratch_row["mlm_accuracy"])
    verdict = (f"The distilled student {'beats' if margin > 0 else 'does NOT beat'} the scratch student on held-out "
               f"MLM accuracy by {margin:+.2f} points ({sum(b['masked_lm_weights'].sum() for b in batches):.0f} "
               f"masked tokens in {len(batches)} batches).")
    runs, kept = _runs(workdir, timings, resumed, jax.device_count(), jax.devices()[0].platform)
    report = (f"{table}\n\n{verdict}\n\n{_wall_time(runs, kept)}\nCurves: "
              + ", ".join(os.path.join(d, plot.CURVES_PNG) for d in dirs.values()) + "\n")
    storage.path(workdir, "results.md").write_text(report)
    storage.path(workdir, "results.json").write_text(
        json.dumps(dict(rows=rows, timings=kept["timings"], runs=runs, scale=dataclasses.asdict(scale)), indent=2))
    print("\n" + report, flush=True)
    return rows


STAGE_NAMES = ("teacher pretraining", "progressive knowledge transfer", "pretraining distillation",
               "student from scratch")


def _runs(workdir: str, timings: dict[str, float], resumed: list[str], devices: int,
          platform: str) -> tuple[list[dict], dict]:
    """Every run of the pipeline in `workdir` that reached the table, this one last, and the one whose timings
    describe the models: the latest that trained something (a rerun that only resumes keeps the earlier timings).

    A run is {finished, timings, trained, resumed, devices}: `trained` the stages it ran steps of."""
    previous = storage.path(workdir, "results.json")
    runs: list[dict] = []
    if previous.exists():
        try:
            recorded = json.loads(previous.read_text())
        except ValueError:
            recorded = {}  # a table cut short by a crash: this run's is the record
        runs = recorded.get("runs") or ([dict(finished=None, timings=recorded["timings"], trained=list(STAGE_NAMES),
                                               resumed=[], devices=None)] if "timings" in recorded else [])
    stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    runs.append(dict(finished=stamp, timings=timings, trained=[n for n in STAGE_NAMES if n not in resumed],
                     resumed=list(resumed), devices=f"{devices} {platform}"))
    kept = next((r for r in reversed(runs) if r["trained"]), runs[-1])
    return runs, kept


def _wall_time(runs: list[dict], kept: dict) -> str:
    def seconds(timings: dict[str, float]) -> str:
        return ", ".join(f"{k} {v:.0f}s" for k, v in timings.items())

    this = runs[-1]
    if this is kept and not this["resumed"]:
        return f"Wall time: {seconds(this['timings'])} on {this['devices']} device(s)."
    if this is kept:
        return (f"Wall time of this run, which resumed {', '.join(this['resumed'])} (already trained) and trained "
                f"{', '.join(this['trained'])}: {seconds(this['timings'])} on {this['devices']} device(s)."
                + "".join(f"\nEarlier run (finished {r['finished'] or 'unrecorded'}): {seconds(r['timings'])}."
                          for r in runs[:-1]))
    return (f"Wall time: {seconds(kept['timings'])} (the run that trained the models, finished "
            f"{kept['finished'] or 'unrecorded'}).\nThis run resumed every stage (already trained), trained nothing "
            f"and re-evaluated: {seconds(this['timings'])}.")


def scale_fields() -> set[str]:
    return {field.name for field in dataclasses.fields(Scale)}


def define_scale_flags() -> None:
    """One absl flag per `Scale` field (--teacher_steps=..., --seq_len=...); None: `SCALE`'s value."""
    for field in dataclasses.fields(Scale):
        kind = {"int": flags.DEFINE_integer, "float": flags.DEFINE_float, "str": flags.DEFINE_string}[field.type]
        kind(field.name, None, f"the default pipeline (no --config): override Scale.{field.name} "
                               f"(default {SCALE[field.name]})")


def scale_overrides() -> dict[str, Any]:
    """The `Scale` fields given on the command line."""
    return {field.name: getattr(flags.FLAGS, field.name) for field in dataclasses.fields(Scale)
            if getattr(flags.FLAGS, field.name) is not None}
