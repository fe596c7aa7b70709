"""Distillation of an IB-BERT teacher into MobileBERT (REFERENCE sections 3 and 4).

- losses.py      the objectives as additive sums (FMT, mean/variance, attention, PD)
- objective.py   the distillation Objective: one student + one frozen teacher forward per step
- strategies.py  progressive / joint / auxiliary / pd as functions of the step; optimizer groups
- layers.py      the teacher layer each student layer learns from; width and head checks
- stage.py       the stage for the generic trainer (`DISTILLATION`): its spec, then its inputs
- config.py      the `config.distill` schema and its reader (the values: experiments/distill_common.py)
- pipeline.py    runs the README job (experiments/pipeline.py): teacher -> progressive -> PD -> scratch -> table
- evaluate.py    held-out MLM/NSP accuracy
"""

from mobilebert_jax.distill.config import STRATEGIES, DistillConfig
from mobilebert_jax.distill.layers import check_comparable, resolve_layer_map
from mobilebert_jax.distill.stage import DISTILLATION

__all__ = ["DISTILLATION", "STRATEGIES", "DistillConfig", "check_comparable", "resolve_layer_map"]
