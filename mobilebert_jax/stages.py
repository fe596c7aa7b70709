"""The one table of stages: `config.stage` -> the `train.stage.Stage` that owns everything about it.

Training (`main`), evaluation, quantization, export and the ahead-of-time compiler look a stage up here and ask it;
none of them tests a stage's name. A new stage is one module defining its `Stage` and one line below (WORKSPACE.md).
"""

from __future__ import annotations

import importlib

from mobilebert_jax.errors import ConfigError

# config.stage -> "module:attribute" of its Stage, imported only when that stage is used.
STAGES = {
    "teacher_pretraining": "mobilebert_jax.pretraining.stage:PRETRAINING",
    "pretraining": "mobilebert_jax.pretraining.stage:PRETRAINING",
    "distillation": "mobilebert_jax.distill.stage:DISTILLATION",
    "glue_finetuning": "mobilebert_jax.finetune.stage:GLUE",
    "squad_finetuning": "mobilebert_jax.finetune.stage:SQUAD",
}


def lookup(name: str, field: str = "config.stage"):
    """The `Stage` that `name` names; a ConfigError naming `field` for a name the table lacks."""
    if name not in STAGES:
        raise ConfigError(f"{field}={name!r}: choose one of {sorted(STAGES)}")
    module, attribute = STAGES[name].split(":")
    return getattr(importlib.import_module(module), attribute)
