"""Distillation of an IB-BERT teacher into MobileBERT (REFERENCE sections 3 and 4).

- losses.py      the objectives as additive sums (FMT, mean/variance, attention, PD)
- objective.py   the distillation Objective: one student + one frozen teacher forward per step
- strategies.py  progressive / joint / auxiliary / pd as functions of the step; optimizer groups
- layers.py      the teacher layer each student layer learns from; width and head checks
- task.py        the stage for the generic trainer (`stage = "distillation"`): its spec, then its inputs
- experiment.py  the paper's settings and the `:smoke` scale for experiments/distill_*.py
- pipeline.py    teacher -> progressive -> PD -> scratch baseline -> table and plot, in one command
- evaluate.py, plot.py  held-out MLM/NSP accuracy; per-layer transfer-loss curves
"""

from mobilebert_jax.distill.config import STRATEGIES, DistillConfig, default_config
from mobilebert_jax.distill.layers import check_comparable, resolve_layer_map
from mobilebert_jax.distill.task import DISTILLATION

__all__ = ["DISTILLATION", "STRATEGIES", "DistillConfig", "check_comparable", "default_config", "resolve_layer_map"]
