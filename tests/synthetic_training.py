"""A pretraining stage on synthetic batches, for testing the trainer without the data pipeline.

Batch i is a pure function of (seed, i); the iterator's state is i, so resume is exact.
Also a script: python tests/synthetic_training.py WORKDIR [TOTAL_STEPS [x.y=VALUE ...]] runs the
trainer (VALUE a Python literal) and writes the final parameters to WORKDIR/final_params.npz.
"""

from __future__ import annotations

import ast
import os
import sys
import time

import jax.numpy as jnp
import ml_collections
import numpy as np

from mobilebert_jax import checkpointing, experiment_config, flops, get_preset, optim
from mobilebert_jax.modeling import MobileBertForPreTraining
from mobilebert_jax.pretraining.objective import PretrainingObjective
from mobilebert_jax.pretraining.stage import pretraining_example
from mobilebert_jax.train.stage import Spec, Stage, StageIO

SEQ_LEN, PREDICTIONS = 16, 4
# The shared experiment values (the optimizer at TF1's settings, the checkpoint section): the library holds none.
COMMON = experiment_config.load_module(
    os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments", "common.py"))


class SyntheticBatches:
    def __init__(self, vocab: int, batch_size: int, seed: int, process_index: int = 0, process_count: int = 1):
        self.vocab, self.batch_size, self.seed = vocab, batch_size, seed
        self.rows = slice(process_index * batch_size // process_count, (process_index + 1) * batch_size // process_count)
        self.index = 0

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        rng = np.random.default_rng([self.seed, self.index])
        self.index += 1
        b, t, p = self.batch_size, SEQ_LEN, PREDICTIONS
        ids = rng.integers(5, self.vocab, (b, t)).astype(np.int32)
        positions = np.sort(rng.choice(np.arange(1, t), (b, p), replace=True), -1).astype(np.int32)
        batch = {
            "input_ids": ids, "input_mask": np.ones((b, t), np.int32),
            "segment_ids": (np.arange(t)[None] >= t // 2).astype(np.int32).repeat(b, 0),
            "masked_lm_positions": positions,
            "masked_lm_ids": np.take_along_axis(ids, positions, 1),  # learnable: predict the visible token
            "masked_lm_weights": np.ones((b, p), np.float32),
            "next_sentence_labels": (ids[:, 0] % 2).astype(np.int32),
        }
        return {k: v[self.rows] for k, v in batch.items()}

    def get_state(self) -> dict:
        return {"index": self.index}

    def set_state(self, state: dict) -> None:
        self.index = int(state["index"])


def config(**overrides) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.stage = "synthetic"
    c.seed = 0
    c.batch_size = 8
    c.microbatches = 1
    c.total_steps = 8
    c.log_every = 2
    c.model = ml_collections.ConfigDict(get_preset("mobilebert_test", num_hidden_layers=2).to_dict())
    c.optimizer = COMMON.optimizer("lamb", lr=1e-3)
    c.mesh = ml_collections.ConfigDict(dict(shape=(-1, 1, 1)))
    c.checkpoint = COMMON.checkpoint(every_steps=2, keep_last=10)
    c.checkpoint.async_save = False
    c.eval = ml_collections.ConfigDict(dict(every_steps=4, batch_size=8, num_batches=2))
    c.profile = ml_collections.ConfigDict(dict(start_step=-1, num_steps=0))
    c.update_from_flattened_dict(overrides)
    return c


def synthetic_spec(c: ml_collections.ConfigDict) -> Spec:
    from mobilebert_jax.config import MobileBertConfig

    model_cfg = MobileBertConfig.from_dict(c.model.to_dict())
    model = MobileBertForPreTraining(model_cfg)
    return Spec(
        name="synthetic",
        objective=PretrainingObjective(model),
        init_params=lambda rng: model.init(rng, jnp.zeros((1, SEQ_LEN), jnp.int32))["params"],
        example=pretraining_example(SEQ_LEN, PREDICTIONS),
        tokens_per_example=SEQ_LEN,
        train_flops_per_example=flops.pretraining_train_flops_per_sequence(model_cfg, SEQ_LEN, PREDICTIONS),
    )


def read_synthetic(c: ml_collections.ConfigDict, workdir: str, spec: Spec) -> StageIO:
    import jax

    from mobilebert_jax.config import MobileBertConfig

    model_cfg = MobileBertConfig.from_dict(c.model.to_dict())
    return StageIO(
        spec=spec, describe="synthetic batches",
        train_iterator=SyntheticBatches(model_cfg.vocab_size, c.batch_size, c.seed, jax.process_index(),
                                        jax.process_count()),
        eval_batches=lambda: (next(SyntheticBatches(model_cfg.vocab_size, c.eval.batch_size, 999))
                              for _ in range(c.eval.num_batches)),
    )


SYNTHETIC = Stage(spec=synthetic_spec, read=read_synthetic)


def main(argv: list[str]) -> None:
    import jax

    from mobilebert_jax.train.trainer import train

    workdir = argv[1]
    c = config(total_steps=int(argv[2])) if len(argv) > 2 else config()
    c.update_from_flattened_dict({k: ast.literal_eval(v) for k, v in (a.split("=", 1) for a in argv[3:])})
    if os.environ.get("SLOW_STEP_SECONDS"):  # lets a test interrupt the run between steps
        original = SyntheticBatches.__next__

        def slow_next(self):
            time.sleep(float(os.environ["SLOW_STEP_SECONDS"]))
            return original(self)

        SyntheticBatches.__next__ = slow_next
    train(c, workdir, SYNTHETIC)
    params = final_params(workdir, c)
    if jax.process_index() == 0 and params is not None:
        np.savez(os.path.join(workdir, "final_params.npz"), **params)


def final_params(workdir: str, c) -> dict | None:
    """The latest checkpoint's parameters as 'a/b/c' -> array, if there is one and the run reached total_steps."""
    import flax.linen as nn
    import jax
    from flax import traverse_util

    from mobilebert_jax.train.step import TrainState

    spec = SYNTHETIC.spec(c)
    tx = optim.build_optimizer(c.optimizer, jax.eval_shape(spec.init_params, jax.random.key(0)))

    def init():
        params = spec.init_params(jax.random.key(0))
        return nn.meta.unbox(TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params)))

    manager = checkpointing.Checkpointer.from_config(os.path.join(workdir, "checkpoints"), c.checkpoint)
    state = manager.restore(jax.eval_shape(init)) if manager.latest_step() is not None else None
    manager.close()
    if state is None or int(state.step) != c.total_steps:
        return None
    return {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(jax.device_get(state.params)).items()}


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from mobilebert_jax import preemption

    preemption.install()  # as mobilebert_jax.main does
    print("STARTED", flush=True)
    main(sys.argv)
    preemption.exit_if_stopped()
