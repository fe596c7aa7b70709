"""The distillation `Objective` (train/objective.py): one student forward, one frozen teacher forward, per step.

Sums (added over microbatches, divided by whole-batch totals in `loss`):
  tokens                         scored positions (the layer losses' denominator)
  layer_{i}/{component}          component in feature_map, mean, variance, attention: the distance of
                                 student layer i to its teacher layer, ungated (every layer run at this step,
                                 so a reader sees the layers trained earlier stay aligned); 0 in a progressive
                                 training step for a layer above its phase's, which neither model runs
  layer_{i}/attention_ce         with attention: TF1's attention cross-entropy (KL + the teacher's
                                 entropy), ungated; logged, never optimized
  layer_{i}/loss                 what layer i adds to the optimized loss: its weighted, scaled distance
                                 times its gate at this step (0 outside a progressive layer's phase)
  pd_mlm_sum                     PD's soft-target masked-LM cross-entropy (weighted)
  mlm_*, nsp_*                   hard-label MLM / NSP sums (pretraining/objective.py), whenever the heads run
The heads run when PD is on, and always in evaluation (so a transfer run
reports the held-out MLM accuracy of the student under the teacher's heads).

A progressive training step computes only what it trains: in phase l (layer l's transfer loss on) the student
runs layers 0..l and the teacher the layers they map to, up to the highest of layer_map[0..l]; the layers above,
their distances and their backward pass are skipped by `lax.cond`s on the phase, in one compiled program for
every phase (modeling/encoder.py). Nothing above layer l reaches the loss (its gate is 0, no heads run), so the
loss and gradients are the full forward's. Evaluation runs every layer.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from mobilebert_jax.distill import losses as distill_losses
from mobilebert_jax.distill import strategies
from mobilebert_jax.distill.config import LAYER_WEIGHTS, DistillConfig
from mobilebert_jax.modeling import MobileBertForPreTraining, MobileBertModel
from mobilebert_jax.pretraining import objective as pretraining_objective
from mobilebert_jax.train.objective import Batch, StepContext, Sums


# How a terminal line names the per-layer distances.
_SHORT = {"feature_map": "fm", "mean": "mean", "variance": "var", "attention": "att"}


@dataclasses.dataclass(frozen=True)
class DistillationObjective:
    """The student is the trained tree; the teacher is `context.frozen` (big_vision's distill trainer: just
    another parameter tree, given no gradient)."""
    distill: DistillConfig
    num_layers: int  # the student's
    layer_map: tuple[int, ...]  # teacher layer per student layer (empty without layer losses)
    student: MobileBertForPreTraining
    teacher: MobileBertForPreTraining
    # False: a progressive training step runs every layer of both models, as if all were trained (the reference
    # tests/test_distill_stage.py and benchmarks/progressive_step.py compare the phase-limited step with).
    stop_at_phase: bool = True

    @property
    def progress_keys(self) -> tuple[str, ...]:
        return ("loss", "transfer_loss") if self.distill.layer_losses else ("loss", "mlm_accuracy")

    @property
    def components(self) -> tuple[str, ...]:
        """The per-layer losses with a non-zero weight (nothing is computed for the others)."""
        if not self.distill.layer_losses:
            return ()
        return tuple(k for k in LAYER_WEIGHTS if self.distill.weights[k] > 0)

    def trained_layers(self, step: int) -> range:
        """The layers whose transfer loss has been on by logged step `step` (the count of steps taken)."""
        if self.distill.strategy != "progressive":
            return range(self.num_layers)
        return range(min(max(step - 1, 0) // self.distill.phase_steps, self.num_layers - 1) + 1)

    def summary(self, metrics: Mapping[str, float], step: int) -> list[str]:
        """A terminal line's parts (metrics_writer.LINE_WIDTH): the loss; in progressive transfer the trained
        layer's distances; the layer (of those trained so far) farthest from its teacher layer, by the weighted
        distance the loss uses; held-out MLM and NSP when evaluated."""
        parts = [f"loss {metrics['loss']:.4g}"] if "loss" in metrics else []
        if self.components and f"layer_0/{self.components[0]}" in metrics:
            trained = self.trained_layers(step)
            if self.distill.strategy == "progressive":
                parts.append(f"layer {trained[-1]}: " + " ".join(
                    f"{_SHORT[k]} {metrics[f'layer_{trained[-1]}/{k}']:.2g}" for k in self.components))
            w = self.distill.weights
            weighted = {i: sum(w[k] * metrics[f"layer_{i}/{k}"] for k in self.components) for i in trained}
            worst = max(weighted, key=weighted.get)
            if len(trained) > 1:
                parts.append(f"worst layer {worst}: {weighted[worst]:.3g} weighted")
        if "mlm_accuracy" in metrics:
            parts.append(f"MLM acc {100 * metrics['mlm_accuracy']:.2f}%")
        if "nsp_accuracy" in metrics:
            parts.append(f"NSP acc {100 * metrics['nsp_accuracy']:.2f}%")
        return parts

    def token_weights(self, batch: Batch) -> jax.Array:
        mask = batch["input_mask"].astype(jnp.float32)
        return jnp.ones_like(mask) if self.distill.include_padding else mask

    def sums(self, params, batch: Batch, rng: jax.Array, context: StepContext, *, train: bool) -> Sums:
        d = self.distill
        heads = d.pd or not train
        teacher_logits = d.pd and d.alpha < 1.0
        layers = bool(self.components)
        attention = "attention" in self.components
        student_deterministic = not train or not d.student_dropout

        # The progressive phase's layer: the last one either model needs (None: every layer runs).
        phase_layer = None
        if train and layers and d.strategy == "progressive" and not heads and self.stop_at_phase:
            phase_layer = jnp.minimum(strategies.phase_of(context.step, d.phase_steps), self.num_layers - 1)
        # The highest teacher layer the student's layers 0..l map to, for each l.
        teacher_reach = jnp.asarray(np.maximum.accumulate(self.layer_map) if self.layer_map else [0], jnp.int32)

        def forward(model, params, batch, with_heads, deterministic, rng, last_layer):
            kwargs = dict(attention_mask=batch["input_mask"], token_type_ids=batch["segment_ids"],
                          deterministic=deterministic, output_hidden_states=layers,
                          output_attention_scores=attention, rngs=None if deterministic else {"dropout": rng})
            if with_heads:
                return model.apply({"params": params}, batch["input_ids"],
                                   masked_lm_positions=batch["masked_lm_positions"], **kwargs)
            # Transfer-only training needs no heads: run the backbone on its own subtree.
            backbone = MobileBertModel(model.config, add_pooling_layer=model.config.classifier_activation)
            return backbone.apply({"params": params["mobilebert"]}, batch["input_ids"], last_layer=last_layer,
                                  **kwargs)

        s = forward(self.student, params, batch, heads, student_deterministic, rng, phase_layer)
        t = jax.lax.stop_gradient(forward(
            self.teacher, context.frozen, batch, teacher_logits, True, None,
            None if phase_layer is None else teacher_reach[phase_layer])) if (layers or teacher_logits) else None
        w_BxT = self.token_weights(batch)
        sums: Sums = {"tokens": jnp.sum(w_BxT)}
        if layers:
            gates = strategies.layer_gates(d.strategy, context.step, self.num_layers, d.phase_steps)
            for i, j in enumerate(self.layer_map):
                hs, ht = s["hidden_states"][i + 1], t["hidden_states"][j + 1]
                scores = (s["attention_scores"][i], t["attention_scores"][j]) if attention else None

                def layer_sums(hs=hs, ht=ht, scores=scores):
                    distances: Sums = {}
                    if "feature_map" in self.components:
                        distances["feature_map"] = distill_losses.feature_map_sum(hs, ht, w_BxT)
                    if "mean" in self.components or "variance" in self.components:
                        mean, var = distill_losses.mean_variance_sums(hs, ht, w_BxT)
                        if "mean" in self.components:
                            distances["mean"] = mean
                        if "variance" in self.components:
                            distances["variance"] = var
                    if attention:
                        distances["attention"], distances["attention_ce"] = distill_losses.attention_sums(
                            *scores, w_BxT)
                    return distances

                if phase_layer is None:
                    distances = layer_sums()
                else:  # a layer above the phase's was not run: no distance to take
                    distances = jax.lax.cond(i <= phase_layer, layer_sums,
                                             lambda: jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype),
                                                                  jax.eval_shape(layer_sums)))
                sums.update({f"layer_{i}/{k}": v for k, v in distances.items()})
                sums[f"layer_{i}/loss"] = gates[i] * self.layer_loss(i, distances)
        if heads:
            sums.update(pretraining_objective.masked_lm_sums(s["mlm_logits"], batch["masked_lm_ids"],
                                                    batch["masked_lm_weights"]))
            sums.update(pretraining_objective.nsp_sums(s["nsp_logits"], batch["next_sentence_labels"]))
        if d.pd:
            sums["pd_mlm_sum"] = distill_losses.distillation_mlm_sum(
                s["mlm_logits"], t["mlm_logits"] if teacher_logits else None, batch["masked_lm_ids"],
                batch["masked_lm_weights"], d.alpha, d.temperature)
        return sums

    def totals(self, batch: Batch) -> dict[str, jax.Array]:
        return {"tokens": jnp.maximum(jnp.sum(self.token_weights(batch)), 1.0), **pretraining_objective.mlm_nsp_totals(batch)}

    def layer_scale(self, layer: int) -> float:
        """The factor on layer `layer`'s weighted transfer loss (`config.distill.layer_loss_scaling`)."""
        return self.distill.layer_loss_scale(layer, self.num_layers)

    def layer_loss(self, layer: int, distances: Sums) -> jax.Array:
        """Layer `layer`'s weighted, scaled distance (`distances`: component -> value, sums or means), ungated."""
        w = self.distill.weights
        return self.layer_scale(layer) * sum(w[k] * distances[k] for k in self.components)

    def loss(self, sums: Sums, totals: dict[str, jax.Array]) -> jax.Array:
        w = self.distill.weights
        total = jnp.zeros((), jnp.float32)
        if self.components:
            for i in range(self.num_layers):
                total = total + sums[f"layer_{i}/loss"] / totals["tokens"]
        if self.distill.pd:
            total = total + w["mlm"] * sums["pd_mlm_sum"] / totals["mlm"]
            total = total + w["nsp"] * sums["nsp_loss_sum"] / totals["nsp"]
        return total

    def summarize(self, sums: Sums) -> dict[str, jax.Array]:
        out: dict[str, jax.Array] = {}
        if self.components:
            tokens = jnp.maximum(sums["tokens"], 1.0)
            transfer = jnp.zeros((), jnp.float32)
            for i in range(self.num_layers):
                for k in self.components:
                    out[f"layer_{i}/{k}"] = sums[f"layer_{i}/{k}"] / tokens
                if "attention" in self.components:
                    out[f"layer_{i}/attention_ce"] = sums[f"layer_{i}/attention_ce"] / tokens
                # What the layer adds to the optimized loss: weighted, scaled as TF1 (or TF2) did, gated.
                out[f"layer_{i}/loss"] = sums[f"layer_{i}/loss"] / tokens
                transfer = transfer + out[f"layer_{i}/loss"]
            out["transfer_loss"] = transfer
        if "mlm_weight_sum" in sums:
            out.update({k: v for k, v in pretraining_objective.summarize(sums).items() if k != "loss"})
        totals = {"tokens": jnp.maximum(sums["tokens"], 1.0)}
        if self.distill.pd:
            totals["mlm"] = sums["mlm_weight_sum"] + pretraining_objective.MLM_DENOMINATOR_EPS
            totals["nsp"] = jnp.maximum(sums["nsp_count"], 1.0)
            out["pd_mlm_loss"] = sums["pd_mlm_sum"] / totals["mlm"]
        # The optimized loss, once: over one batch the sums' own denominators are the batch's totals.
        out["loss"] = self.loss(sums, totals)
        return out
