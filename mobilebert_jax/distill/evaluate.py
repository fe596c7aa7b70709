"""Held-out masked-LM and NSP accuracy of one parameter tree, on one fixed pass over the eval split.

Every model in a comparison is scored on exactly the same batches (same
examples, same masks), so the numbers differ only by the models.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import ml_collections

from mobilebert_jax.config import MobileBertConfig
from mobilebert_jax.data.loader import make_pretraining_loader
from mobilebert_jax.data.manifest import load_manifest
from mobilebert_jax.modeling import MobileBertForPreTraining
from mobilebert_jax.train import step as step_lib
from mobilebert_jax.pretraining.objective import PretrainingObjective


def eval_batches(data_cfg: ml_collections.ConfigDict, batch_size: int, seed: int = 0) -> list[dict]:
    """One pass over the prepared eval split (the last batch padded with rows of weight 0)."""
    num = load_manifest(data_cfg.prepared_dir)["splits"]["eval"]["instances"]
    loader = make_pretraining_loader(data_cfg, split="eval", global_batch_size=batch_size, seed=seed, num_epochs=1,
                                     pad_final_batch=True, process_index=jax.process_index(),
                                     process_count=jax.process_count())
    return [next(loader) for _ in range(math.ceil(num / batch_size))]


def held_out_metrics(config: MobileBertConfig, params: Any, batches: list[dict]) -> dict[str, float]:
    """mlm_accuracy, mlm_loss, nsp_accuracy, nsp_loss over `batches`, without dropout."""
    objective = PretrainingObjective(MobileBertForPreTraining(config))
    summary = step_lib.evaluate(jax.jit(step_lib.make_eval_step(objective)), objective, params, batches)
    return {k: summary[k] for k in ("mlm_accuracy", "mlm_loss", "nsp_accuracy", "nsp_loss")}
