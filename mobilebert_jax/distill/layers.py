"""Which teacher layer each student layer learns from, and whether the two models can be compared at all.

Layer-wise transfer compares the 512-d inter-block features and the attention
maps, so the student's hidden width must equal the teacher's inter-block
width (the reason IB-BERT has one) and, for attention transfer, both must
have the same number of heads. The depths may differ; `layer_map` says
which teacher layer each student layer imitates.
"""

from __future__ import annotations

import math
from typing import Sequence

from mobilebert_jax.errors import ConfigError
from mobilebert_jax.config import MobileBertConfig


def resolve_layer_map(layer_map: Sequence[int], student: MobileBertConfig, teacher: MobileBertConfig,
                      where: str = "config.distill.layer_map") -> tuple[int, ...]:
    """Teacher layer index (0-based) for each student layer.

    () maps layer to layer when the depths agree, and otherwise spreads the
    student evenly over the teacher, ending on the teacher's last layer:
    student layer i -> ceil((i + 1) * Lt / Ls) - 1.
    """
    ls, lt = student.num_hidden_layers, teacher.num_hidden_layers
    if not layer_map:
        return tuple(math.ceil((i + 1) * lt / ls) - 1 for i in range(ls))
    layer_map = tuple(layer_map)
    if len(layer_map) != ls:
        raise ConfigError(f"{where}={layer_map!r} has {len(layer_map)} entries; the student "
                          f"(config.model.num_hidden_layers={ls}) needs one teacher layer per student layer")
    for i, t in enumerate(layer_map):
        if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < lt:
            raise ConfigError(f"{where}[{i}]={t!r}: must be a teacher layer index in [0, {lt}) "
                              f"(config.teacher_model.num_hidden_layers={lt})")
    return layer_map


def check_comparable(student: MobileBertConfig, teacher: MobileBertConfig, *, features: bool, attention: bool,
                     logits: bool) -> None:
    """Raises ConfigError naming the fields whose mismatch makes a requested loss impossible."""
    problems = []
    if (features or attention) and student.hidden_size != teacher.hidden_size:
        problems.append(f"config.model.hidden_size={student.hidden_size} differs from config.teacher_model."
                        f"hidden_size={teacher.hidden_size}: layer-wise transfer compares the inter-block "
                        f"features, so the student's width must equal the teacher's inter-block width")
    if attention and student.num_attention_heads != teacher.num_attention_heads:
        problems.append(f"config.model.num_attention_heads={student.num_attention_heads} differs from "
                        f"config.teacher_model.num_attention_heads={teacher.num_attention_heads}: attention "
                        f"transfer compares head by head (or set config.distill.weights.attention=0)")
    if logits and student.vocab_size != teacher.vocab_size:
        problems.append(f"config.model.vocab_size={student.vocab_size} differs from config.teacher_model."
                        f"vocab_size={teacher.vocab_size}: pretraining distillation matches the MLM distributions")
    if problems:
        raise ConfigError("; ".join(problems))
