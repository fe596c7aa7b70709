"""The paper's strategy comparison and objective ablation, at the small pipeline's scale, on CPU.

    python benchmarks/ablation_small.py [--workdir=runs/ablation] [--teacher=runs/pipeline/teacher] [--seeds=0,1,2]

Strategies (same student, same teacher, same total student steps = transfer + PD):
  progressive  L phases of layer-wise transfer, then PD
  joint        every layer's transfer loss at once, then PD
  auxiliary    layer losses and PD summed, one phase for the whole budget
  no transfer  PD alone for the whole budget (the student starts from the teacher's embeddings and heads)
Objectives (progressive transfer, then PD, one term removed):
  without AT   attention-transfer weight 0
  without FMT  feature-map, mean and variance weights 0 (the feature-based terms together)
  without PD   the second stage uses hard labels only (alpha = 1): plain MLM + NSP
  pre-TF1 settings  the student's embedding norm trained with layer 0 and the layer losses unscaled, as the
                    project did before following TF1 (every other variant: norm frozen until PD, losses / L)
Diagnostics (why "no transfer" does as well as it does at this scale):
  PD only, half the budget    PD for the PD steps alone: does transfer give PD a better start than none?
  hard labels only            alpha = 1 for the whole budget from the teacher's embeddings and heads: how much
                              of PD's gain is the teacher's soft labels rather than the copied parameters?
Each variant runs once per seed (--seeds); the table gives the mean and sample standard deviation.
Every model is scored on the same held-out batches. The table, with this command, replaces the section
between the ablation markers of docs/distillation.md (--docs="" to leave the docs alone).

A teacher from `python -m mobilebert_jax.main` (the README job) is reused when --teacher points at it and
its architecture matches; otherwise one is trained first (part of the run time).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
import time
from typing import Optional

import ml_collections
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mobilebert_jax import flops, model_source, preemption  # noqa: E402
from mobilebert_jax.config import MobileBertConfig  # noqa: E402
from mobilebert_jax.experiments import pipeline  # noqa: E402
from mobilebert_jax.distill.evaluate import eval_batches, held_out_metrics  # noqa: E402

DOCS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "distillation.md")
BEGIN, END = "<!-- ablation:begin -->", "<!-- ablation:end -->"
JOB = pipeline  # experiments/pipeline.py: each stage's config at the README job's scale

@dataclasses.dataclass(frozen=True)
class Variant:
    strategy: str  # the first (or only) stage
    overrides: dict = dataclasses.field(default_factory=dict)  # its config.distill fields
    then_pd: Optional[dict] = None  # a PD stage after it, with these config.distill overrides; None: no second stage
    steps: str = "student"  # a one-stage variant's budget: "student" (transfer + PD steps) or "pd" (PD steps only)


WITHOUT_FMT = {"weights": {"feature_map": 0.0, "mean": 0.0, "variance": 0.0}}
PRE_TF1 = {"train_embedding_norm_in_transfer": True, "layer_loss_scaling": "none"}
VARIANTS = {
    # The paper's strategy comparison: the same student budget for each.
    "progressive": Variant("progressive", then_pd={}),
    "joint": Variant("joint", then_pd={}),
    "auxiliary": Variant("auxiliary"),
    "no transfer": Variant("pd"),
    # The paper's objective ablation, on progressive transfer + PD.
    "progressive, without AT": Variant("progressive", {"weights": {"attention": 0.0}}, then_pd={}),
    "progressive, without FMT": Variant("progressive", WITHOUT_FMT, then_pd={}),
    "progressive, without PD": Variant("progressive", then_pd={"alpha": 1.0}),
    # What following TF1 changed: the embedding norm trained with layer 0 and unscaled layer losses (the
    # project's settings before; every other variant runs with TF1's: norm frozen until PD, losses / L).
    "progressive, pre-TF1 settings": Variant("progressive", PRE_TF1, then_pd={}),
    # Diagnostics for "no transfer": is transfer a better start for PD than none (the same PD steps)?
    # Does PD's gain come from the teacher's soft labels or from starting with its embeddings and heads?
    "diagnostic: PD only, half the budget": Variant("pd", steps="pd"),
    "diagnostic: hard labels only (alpha = 1), teacher's embeddings and heads": Variant("pd", {"alpha": 1.0}),
}


def _load(workdir: str, model: ml_collections.ConfigDict):
    """(config, params) of a finished run, refused if its model is not `model`."""
    source = model_source.open_source(workdir, workdir)
    model_source.check_architecture(source, MobileBertConfig.from_dict(model.to_dict()), source.shapes, workdir,
                                    "the ablation's model")
    return source.config, model_source.read(source)


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def variant_stages(name: str, seed: int, scale: pipeline.Scale, teacher_model, teacher_dir: str, data_dir: str,
                   workdir: str) -> list[tuple[str, ml_collections.ConfigDict, str]]:
    """(stage name, config, workdir) of each stage of one variant with one seed; the last one is its student.

    The seed sets the student's initialization, data order and masks; the teacher is the same for all.
    """
    v = VARIANTS[name]
    base = os.path.join(workdir, _slug(name) + (f"_seed{seed}" if seed else ""))
    if v.then_pd is None and v.strategy == "pd":  # PD alone, for the variant's whole budget
        scale = dataclasses.replace(scale, pd_steps=scale.student_steps if v.steps == "student" else scale.pd_steps)
    first = JOB.distill_config(v.strategy, scale, teacher_model, teacher_dir, data_dir, **v.overrides)
    stages = [(f"{name}, seed {seed}: {v.strategy}", first, os.path.join(base, v.strategy))]
    if v.then_pd is not None:
        pd = JOB.distill_config("pd", scale, teacher_model, teacher_dir, data_dir, student_init=stages[0][2],
                                **v.then_pd)
        stages.append((f"{name}, seed {seed}: pd", pd, os.path.join(base, "pd")))
    for _, c, _ in stages:
        c.seed = seed
    return stages


def run_variant(name: str, seed: int, scale: pipeline.Scale, teacher_model, teacher_dir: str, data_dir: str,
                workdir: str, timings: dict) -> Optional[str]:
    """Trains one variant with one seed; returns the workdir holding its final student (None: a signal stopped it)."""
    from mobilebert_jax.distill.stage import DISTILLATION

    start = time.monotonic()
    stages = variant_stages(name, seed, scale, teacher_model, teacher_dir, data_dir, workdir)
    for stage, config, stage_dir in stages:
        if not pipeline.train_stage(stage, config, stage_dir, DISTILLATION, {}):
            return None
    timings[name] = timings.get(name, 0.0) + time.monotonic() - start
    return stages[-1][2]


def _mean_std(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    std = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5 if len(values) > 1 else 0.0
    return mean, std


def markdown(rows: list[dict], command: str, scale: pipeline.Scale, seeds: list[int], timings: dict,
             masked_tokens: int) -> str:
    """rows: {variant, runs: [metrics per seed]}; each column is the mean (± sample std) over the seeds."""
    lines = [f"Command: `{command}`", "",
             f"Scale: {scale.layers}-layer teacher and student, batch {scale.batch_size} x {scale.seq_len} tokens, "
             f"{scale.transfer_steps} transfer + {scale.pd_steps} PD student steps per variant "
             f"({scale.student_steps} for the one-stage variants), one teacher ({scale.teacher_steps} steps) for all. "
             f"Seeds {', '.join(map(str, seeds))} (student initialization, data order, masks); every model scored "
             f"on the same {masked_tokens} held-out masked tokens. Wall time: "
             + ", ".join(f"{k} {v / 60:.1f} min" for k, v in timings.items()) + ".", "",
             "| variant | held-out MLM accuracy | per seed | held-out MLM loss | held-out NSP accuracy |",
             "|---|---|---|---|---|"]
    for r in rows:
        acc = _mean_std([100 * m["mlm_accuracy"] for m in r["runs"]])
        loss = _mean_std([m["mlm_loss"] for m in r["runs"]])
        nsp = _mean_std([100 * m["nsp_accuracy"] for m in r["runs"]])
        per_seed = " / ".join(f"{100 * m['mlm_accuracy']:.2f}" for m in r["runs"])
        if len(r["runs"]) > 1:
            lines.append(f"| {r['variant']} | {acc[0]:.2f}% ± {acc[1]:.2f} | {per_seed} | "
                         f"{loss[0]:.3f} ± {loss[1]:.3f} | {nsp[0]:.1f}% ± {nsp[1]:.1f} |")
        else:
            lines.append(f"| {r['variant']} | {acc[0]:.2f}% | {per_seed} | {loss[0]:.3f} | {nsp[0]:.1f}% |")
    return "\n".join(lines)


def write_docs(path: str, section: str) -> None:
    with open(path) as f:
        text = f.read()
    if BEGIN not in text or END not in text:
        raise ValueError(f"{path} has no {BEGIN} ... {END} section to replace")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    with open(path, "w") as f:
        f.write(f"{head}{BEGIN}\n{section}\n{END}{tail}")


def main(argv: list[str]) -> None:
    del argv
    f = flags.FLAGS
    from mobilebert_jax.pretraining.stage import PRETRAINING

    preemption.install()  # a SIGTERM stops the current stage and the variants after it (pipeline.train_stage)

    started = time.monotonic()
    scale = pipeline.default_scale()
    data_dir = os.path.join(f.workdir, "data")
    timings: dict[str, float] = {}
    teacher_cfg = JOB.teacher_config(scale, data_dir)
    teacher_dir = f.teacher
    try:
        _load(teacher_dir, teacher_cfg.model)
        print(f"reusing the teacher in {teacher_dir}", flush=True)
    except Exception as e:  # absent, or another architecture: train one here
        print(f"training a teacher ({type(e).__name__}: {e})", flush=True)
        teacher_dir = os.path.join(f.workdir, "teacher")
        if not pipeline.train_stage("teacher", teacher_cfg, teacher_dir, PRETRAINING, timings):
            return

    by_slug = {_slug(name): name for name in VARIANTS}  # names hold commas, which a list flag splits on
    unknown = sorted(set(f.only) - set(by_slug))
    if unknown:
        raise SystemExit(f"--only: unknown variant(s) {unknown}; choose from {sorted(by_slug)}")
    names = [by_slug[slug] for slug in f.only] or list(VARIANTS)
    seeds = [int(x) for x in f.seeds]
    finals = {}
    for name in names:
        finals[name] = [run_variant(name, seed, scale, teacher_cfg.model, teacher_dir, data_dir, f.workdir, timings)
                        for seed in seeds if not preemption.STOP.is_set()]
        if preemption.STOP.is_set():  # a stage stopped early: no table from unfinished runs
            return

    batches = eval_batches(teacher_cfg.data, scale.eval_batch_size)
    student = JOB.student_model(teacher_cfg.model)
    cfg, params = _load(teacher_dir, teacher_cfg.model)
    rows = [dict(variant="(teacher)", runs=[held_out_metrics(cfg, params, batches)])]
    for name, workdirs in finals.items():
        runs = []
        for final in workdirs:
            cfg, params = _load(final, student)
            runs.append(held_out_metrics(cfg, params, batches))
        rows.append(dict(variant=name, runs=runs))
    timings["total"] = time.monotonic() - started
    masked = int(sum(b["masked_lm_weights"].sum() for b in batches))
    command = "python benchmarks/ablation_small.py " + " ".join(a for a in sys.argv[1:])
    section = markdown(rows, command.strip(), scale, seeds, timings, masked)
    print("\n" + section, flush=True)
    with open(os.path.join(f.workdir, "ablation.json"), "w") as out:
        json.dump(dict(rows=rows, seeds=seeds, timings=timings, scale=dataclasses.asdict(scale),
                       student_params=flops.parameter_count(cfg)), out, indent=2)
    if f.docs:
        write_docs(f.docs, section)
        print(f"wrote the table into {f.docs}")


def define_flags() -> None:
    # Only when run as a script: importing this module (the tests do) must not claim flag names.
    flags.DEFINE_string("workdir", os.path.join("runs", "ablation"), "one subdirectory per run")
    flags.DEFINE_string("teacher", os.path.join("runs", "pipeline", "teacher"),
                        "a teacher workdir to reuse, if present")
    flags.DEFINE_string("docs", DOCS, "markdown file whose ablation section is replaced ('' to skip)")
    flags.DEFINE_list("only", [], "run just these variants, named by their run directories "
                      "(e.g. joint,progressive_without_at)")
    flags.DEFINE_list("seeds", ["0", "1", "2"], "one run of every variant per seed; the table gives mean and std")


if __name__ == "__main__":
    define_flags()
    from mobilebert_jax import cli

    cli.run_absl(main)
