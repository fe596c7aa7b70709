"""The paper's strategy comparison and objective ablation, at the small pipeline's scale, on CPU.

    python benchmarks/ablation_small.py [--workdir=runs/ablation] [--teacher=runs/pipeline/teacher]

Strategies (same student, same teacher, same total student steps = transfer + PD):
  progressive  L stages of layer-wise transfer, then PD
  joint        every layer's transfer loss at once, then PD
  auxiliary    layer losses and PD summed, one stage for the whole budget
  no transfer  PD alone for the whole budget (the student starts from the teacher's embeddings and heads)
Objectives (progressive transfer, then PD, one term removed):
  without AT   attention-transfer weight 0
  without FMT  feature-map, mean and variance weights 0 (the feature-based terms together)
  without PD   the second stage uses hard labels only (alpha = 1): plain MLM + NSP
Every model is scored on the same held-out batches. The table, with this command, replaces the section
between the ablation markers of docs/distillation.md (--docs="" to leave the docs alone).

A teacher from `python -m mobilebert_jax.distill.pipeline` is reused when --teacher points at it and
its architecture matches; otherwise one is trained first (part of the run time).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mobilebert_jax import flops  # noqa: E402
from mobilebert_jax.distill import pipeline  # noqa: E402
from mobilebert_jax.distill.evaluate import eval_batches, held_out_metrics  # noqa: E402

DOCS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "distillation.md")
BEGIN, END = "<!-- ablation:begin -->", "<!-- ablation:end -->"

flags.DEFINE_string("workdir", os.path.join("runs", "ablation"), "one subdirectory per run")
flags.DEFINE_string("teacher", os.path.join("runs", "pipeline", "teacher"), "a teacher workdir to reuse, if present")
flags.DEFINE_string("docs", DOCS, "markdown file whose ablation section is replaced ('' to skip)")
flags.DEFINE_list("only", [], "run just these variants (names as in the table's first column, e.g. joint)")

# name -> (first stage strategy, its config.distill overrides, second stage overrides or None)
VARIANTS = {
    "progressive": ("progressive", {}, {}),
    "joint": ("joint", {}, {}),
    "auxiliary": ("auxiliary", {}, None),
    "no transfer": ("pd", {}, None),
    "progressive, without AT": ("progressive", {"weights": {"attention": 0.0}}, {}),
    "progressive, without FMT": ("progressive", {"weights": {"feature_map": 0.0, "mean": 0.0, "variance": 0.0}}, {}),
    "progressive, without PD": ("progressive", {}, {"alpha": 1.0}),
}


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def run_variant(name: str, scale: pipeline.Scale, teacher_model, teacher_dir: str, data_dir: str, workdir: str,
                timings: dict) -> str:
    """Trains one variant; returns the workdir holding its final student."""
    from mobilebert_jax.distill.task import build_distillation_task

    strategy, first, second = VARIANTS[name]
    base = os.path.join(workdir, _slug(name))
    if strategy == "pd":  # no transfer: PD for the whole student budget
        no_transfer = dataclasses.replace(scale, pd_steps=scale.student_steps)
        c = pipeline.distill_config("pd", no_transfer, teacher_model, teacher_dir, data_dir, **first)
    else:
        c = pipeline.distill_config(strategy, scale, teacher_model, teacher_dir, data_dir, **first)
    start = time.monotonic()
    pipeline.train_stage(f"{name}: {strategy}", c, os.path.join(base, strategy), build_distillation_task, {})
    final = os.path.join(base, strategy)
    if second is not None:
        pd = pipeline.distill_config("pd", scale, teacher_model, teacher_dir, data_dir, student_init=final, **second)
        pipeline.train_stage(f"{name}: pd", pd, os.path.join(base, "pd"), build_distillation_task, {})
        final = os.path.join(base, "pd")
    timings[name] = time.monotonic() - start
    return final


def markdown(rows: list[dict], command: str, scale: pipeline.Scale, timings: dict, masked_tokens: int) -> str:
    lines = [f"Command: `{command}`", "",
             f"Scale: {scale.layers}-layer teacher and student, batch {scale.batch_size} x {scale.seq_len} tokens, "
             f"{scale.transfer_steps} transfer + {scale.pd_steps} PD student steps per variant "
             f"({scale.student_steps} for the one-stage variants), teacher {scale.teacher_steps} steps. Held-out: "
             f"{masked_tokens} masked tokens. Wall time: "
             + ", ".join(f"{k} {v / 60:.1f} min" for k, v in timings.items()) + ".", "",
             "| variant | held-out MLM accuracy | held-out MLM loss | held-out NSP accuracy |", "|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['variant']} | {100 * r['mlm_accuracy']:.2f}% | {r['mlm_loss']:.3f} | "
                     f"{100 * r['nsp_accuracy']:.2f}% |")
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
    from mobilebert_jax.train.pretraining import build_pretraining_task

    started = time.monotonic()
    scale = pipeline.Scale()
    data_dir = os.path.join(f.workdir, "data")
    timings: dict[str, float] = {}
    teacher_cfg = pipeline.teacher_config(scale, data_dir)
    teacher_dir = f.teacher
    try:
        pipeline.load_params(teacher_dir, teacher_cfg.model)
        print(f"reusing the teacher in {teacher_dir}", flush=True)
    except Exception as e:  # absent, or another architecture: train one here
        print(f"training a teacher ({type(e).__name__}: {e})", flush=True)
        teacher_dir = os.path.join(f.workdir, "teacher")
        pipeline.train_stage("teacher", teacher_cfg, teacher_dir, build_pretraining_task, timings)

    names = f.only or list(VARIANTS)
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        raise SystemExit(f"--only: unknown variant(s) {unknown}; choose from {list(VARIANTS)}")
    finals = {name: run_variant(name, scale, teacher_cfg.model, teacher_dir, data_dir, f.workdir, timings)
              for name in names}

    batches = eval_batches(teacher_cfg.data, scale.eval_batch_size)
    student = pipeline.student_model(teacher_cfg.model)
    rows = []
    cfg, params = pipeline.load_params(teacher_dir, teacher_cfg.model)
    rows.append(dict(variant="(teacher)", **held_out_metrics(cfg, params, batches)))
    for name, final in finals.items():
        cfg, params = pipeline.load_params(final, student)
        rows.append(dict(variant=name, **held_out_metrics(cfg, params, batches)))
    timings["total"] = time.monotonic() - started
    masked = int(sum(b["masked_lm_weights"].sum() for b in batches))
    command = "python benchmarks/ablation_small.py " + " ".join(a for a in sys.argv[1:])
    section = markdown(rows, command.strip(), scale, timings, masked)
    print("\n" + section, flush=True)
    with open(os.path.join(f.workdir, "ablation.json"), "w") as out:
        json.dump(dict(rows=rows, timings=timings, scale=dataclasses.asdict(scale),
                       student_params=flops.parameter_count(cfg)), out, indent=2)
    if f.docs:
        write_docs(f.docs, section)
        print(f"wrote the table into {f.docs}")


if __name__ == "__main__":
    app.run(main)
