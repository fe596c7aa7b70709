"""A fine-tuning stage that is neither GLUE nor SQuAD: token tagging (one label per token).

It is what a new task is: this one module plus one line in `stages.STAGES` (the tests add the line with
`register()`). Its data are synthetic and deterministic: generated sentences tokenized by the builtin SentencePiece model, each token labelled 1 where its id is even, else 0; padding counts for nothing.
"""

from __future__ import annotations

import ml_collections
import jax
import jax.numpy as jnp
import numpy as np
import optax

from mobilebert_jax import flops, stages
from mobilebert_jax.config import MobileBertConfig, get_preset
from mobilebert_jax.data.tokenizers import load_tokenizer
from mobilebert_jax.finetune.batching import ShuffledBatches, padded_batches
from mobilebert_jax.finetune.evaluate import calibration_rows
from mobilebert_jax.finetune.features import encode_pairs
from mobilebert_jax.finetune.objectives import _apply
from mobilebert_jax.modeling import MobileBertForTokenClassification
from mobilebert_jax.train.stage import FinishedRun, HeldOut, Scoring, Spec, Stage, StageIO

NAME = "token_tagging"
BUILTIN = "builtin:python_docs_sentencepiece"
SEQ = 16
_EPS = 1e-9


def register(monkeypatch) -> None:
    """The stage's one table line, for the length of a test."""
    monkeypatch.setitem(stages.STAGES, NAME, f"{__name__}:TOKEN_TAGGING")


def config(**overrides) -> ml_collections.ConfigDict:
    from mobilebert_jax.experiment_config import load_module

    common = load_module("experiments/common.py")
    c = ml_collections.ConfigDict()
    c.stage = NAME
    c.seed = 0
    c.batch_size = 8
    c.microbatches = 1
    c.total_steps = 4
    c.log_every = 2
    c.model = ml_collections.ConfigDict(get_preset("mobilebert_test", num_hidden_layers=2, vocab_size=4000,
                                                   max_position_embeddings=SEQ).to_dict())
    c.data = ml_collections.ConfigDict(dict(tokenizer=BUILTIN, max_seq_length=SEQ, examples=64))
    c.optimizer = common.optimizer("adamw", lr=1e-3)
    c.mesh = ml_collections.ConfigDict(dict(shape=(-1, 1, 1)))
    c.checkpoint = common.checkpoint(every_steps=2, keep_last=2)
    c.checkpoint.async_save = False
    c.eval = ml_collections.ConfigDict(dict(every_steps=4, batch_size=8, num_batches=1))
    c.profile = ml_collections.ConfigDict(dict(start_step=-1, num_steps=0))
    c.update_from_flattened_dict(overrides)
    return c


def model(config: ml_collections.ConfigDict, unrolled: bool = False) -> MobileBertForTokenClassification:
    model_cfg = MobileBertConfig.from_dict(config.model.to_dict())
    return MobileBertForTokenClassification(model_cfg.replace(scan_layers=False) if unrolled else model_cfg,
                                            num_labels=2)


def examples(config: ml_collections.ConfigDict, tokenizer: str, split: str) -> dict[str, np.ndarray]:
    words = ("the", "module", "reads", "a", "file", "and", "writes", "lines", "to", "its", "output", "buffer")
    lines = [" ".join(words[(i * 7 + j * 5) % len(words)] for j in range(3 + i % 9)) for i in range(1000)]
    offset = 0 if split == "train" else config.data.examples
    arrays = encode_pairs(load_tokenizer(tokenizer), lines[offset:offset + config.data.examples], None,
                          config.data.max_seq_length)
    arrays["tags"] = np.where(arrays["input_mask"] > 0, arrays["input_ids"] % 2, -1).astype(np.int32)
    return arrays


class Tagging:
    progress_keys = ("loss", "accuracy")

    def __init__(self, tagger):
        self.model = tagger

    def sums(self, params, batch, rng, context, *, train):
        del context
        logits_BxTxK = _apply(self.model, params, batch, rng, train)["logits"].astype(jnp.float32)
        weights_BxT = (batch["tags"] >= 0).astype(jnp.float32)
        if "example_weight" in batch:
            weights_BxT = weights_BxT * batch["example_weight"][:, None]
        tags_BxT = jnp.maximum(batch["tags"], 0)
        xent = optax.softmax_cross_entropy_with_integer_labels(logits_BxTxK, tags_BxT)
        correct = (jnp.argmax(logits_BxTxK, -1) == tags_BxT).astype(jnp.float32)
        return {"loss_sum": jnp.sum(xent * weights_BxT), "correct_sum": jnp.sum(correct * weights_BxT),
                "token_sum": jnp.sum(weights_BxT)}

    def totals(self, batch):
        return {"tokens": jnp.sum((batch["tags"] >= 0).astype(jnp.float32)) + _EPS}

    def loss(self, sums, totals):
        return sums["loss_sum"] / totals["tokens"]

    def summarize(self, sums):
        n = sums["token_sum"] + _EPS
        return {"loss": sums["loss_sum"] / n, "accuracy": sums["correct_sum"] / n}


def spec(config: ml_collections.ConfigDict) -> Spec:
    tagger, seq = model(config), config.data.max_seq_length
    model_cfg = MobileBertConfig.from_dict(config.model.to_dict())
    example = {k: jax.ShapeDtypeStruct((seq,), jnp.int32) for k in ("input_ids", "input_mask", "segment_ids", "tags")}
    return Spec(name=NAME, objective=Tagging(tagger), example=example, tokens_per_example=seq,
                init_params=lambda rng: tagger.init(rng, jnp.zeros((1, seq), jnp.int32))["params"],
                train_flops_per_example=3 * flops.encoder_flops_per_token(model_cfg, seq) * seq, models=(model_cfg,))


def read(config: ml_collections.ConfigDict, workdir: str, stage_spec: Spec) -> StageIO:
    del workdir
    train = examples(config, config.data.tokenizer, "train")
    dev = examples(config, config.data.tokenizer, "dev")
    return StageIO(spec=stage_spec, describe=f"token tagging: {len(train['tags'])} training rows",
                   train_iterator=ShuffledBatches(train, config.batch_size, seed=config.seed),
                   eval_batches=lambda: padded_batches(dev, config.eval.batch_size))


def held_out(run: FinishedRun) -> HeldOut:
    arrays = examples(run.config, run.tokenizer, "dev")
    real = arrays["tags"] >= 0

    def predictions(outputs):
        return np.argmax(outputs["logits"], -1)[real]

    return HeldOut(name="tagging dev", arrays=arrays, predictions=predictions,
                   score=lambda outputs: {"accuracy": float(np.mean(predictions(outputs) == arrays["tags"][real]))})


def evaluate(run: FinishedRun, output_dir: str, batch_size: int) -> dict:
    from mobilebert_jax.finetune.evaluate import apply_fn
    from mobilebert_jax.finetune.prediction import predict

    scored = held_out(run)
    return {"dev": scored.score(predict(apply_fn(run.model, run.params), scored.arrays, batch_size))}


def calibration(run: FinishedRun, count: int, seq_len: int) -> dict[str, np.ndarray]:
    del seq_len  # the rows are already of the run's length
    train = examples(run.config, run.tokenizer, "train")
    rows = calibration_rows(len(train["tags"]), count, seed=run.config.seed)
    return {k: v[rows] for k, v in train.items()}


TOKEN_TAGGING = Stage(spec=spec, read=read,
                      scoring=Scoring(model=model, evaluate=evaluate, held_out=held_out, calibration=calibration,
                                      labels=lambda config: ["odd", "even"]))
