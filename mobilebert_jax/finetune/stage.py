"""GLUE and SQuAD fine-tuning as `Stage`s of the generic trainer (train/stage.py).

The model starts from `config.init_checkpoint`: anything `model_source` reads
(a distillation or pretraining workdir, a checkpoint step, a params directory,
an HF directory or hub id). Its backbone (`mobilebert/...`) is copied onto the
freshly initialized model on a fresh start; the task head stays as initialized. Before anything compiles
(`inherit`), `config.model` becomes the checkpoint's model config, so the resolved config describes the trained
model by itself (evaluation, quantization and export read only the run's workdir, even once the init checkpoint is
gone), and an empty `config.data.tokenizer` becomes the checkpoint's recorded tokenizer (an explicit one must be the
same). With no checkpoint the model is trained from scratch from `config.model` with `config.data.scratch_tokenizer`
(smoke runs). `config.model_overrides` replaces fields of the checkpoint's config (dropout for fine-tuning, the
dtype). A finished run's evaluation, held-out and calibration data are finetune/evaluate.py's.
"""

from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import traverse_util

from mobilebert_jax import flops, model_source, partitioning
from mobilebert_jax.errors import ConfigError
from mobilebert_jax.config import MobileBertConfig
from mobilebert_jax.data import tokenizer_record
from mobilebert_jax.data.tokenizers import load_tokenizer
from mobilebert_jax.modeling import MobileBertForQuestionAnswering, MobileBertForSequenceClassification
from mobilebert_jax.finetune import evaluate, glue, objectives, squad_data
from mobilebert_jax.finetune.examples import GLUE_DATA, SQUAD_DATA, glue_examples, squad_examples, squad_feature_options
from mobilebert_jax.finetune.batching import ShuffledBatches, padded_batches
from mobilebert_jax.train.stage import Scoring, Spec, Stage, StageIO

BACKBONE = "mobilebert"

def model_config(config: ml_collections.ConfigDict) -> MobileBertConfig:
    """`config.model` with `config.model_overrides`; `inherit` has made `config.model` the init checkpoint's."""
    overrides = dict(config.get("model_overrides", {}) or {})
    base = MobileBertConfig.from_dict(config.model.to_dict())
    return base.replace(**overrides) if overrides else base


def inherit(config: ml_collections.ConfigDict) -> None:
    """`config.model` and `config.data.tokenizer` from `config.init_checkpoint` (module docstring), in place."""
    spec = config.data.get("tokenizer") or ""
    source = None
    with config.unlocked():
        if config.get("init_checkpoint"):
            source = model_source.open_source(config.init_checkpoint, "config.init_checkpoint")
            config.model = ml_collections.ConfigDict(source.config.to_dict())
        elif not spec:
            spec = config.data.get("scratch_tokenizer") or ""
        config.data.tokenizer = tokenizer_record.choose(
            spec, "config.data.tokenizer", source.tokenizer if source else None,
            source.tokenizer_dir if source else None, f"config.init_checkpoint={config.init_checkpoint!r}",
            model_config(config).vocab_size, "the model's vocab_size")


def glue_model(config: ml_collections.ConfigDict, unrolled: bool = False) -> MobileBertForSequenceClassification:
    """The GLUE run's model, as trained (unrolled=True: its layers unrolled, as a finished run is read)."""
    model_cfg = model_config(config).replace(scan_layers=False) if unrolled else model_config(config)
    return MobileBertForSequenceClassification(model_cfg, num_labels=glue.get_task(config.task).num_labels)


def squad_model(config: ml_collections.ConfigDict, unrolled: bool = False) -> MobileBertForQuestionAnswering:
    model_cfg = model_config(config).replace(scan_layers=False) if unrolled else model_config(config)
    return MobileBertForQuestionAnswering(model_cfg)


def init_backbone(config: ml_collections.ConfigDict) -> Optional[dict[str, np.ndarray]]:
    """Flat backbone params ("mobilebert/...") of `config.init_checkpoint` (any model_source kind), or None."""
    if not config.get("init_checkpoint"):
        return None
    source = model_source.open_source(config.init_checkpoint, "config.init_checkpoint")
    # In the layout this run's model uses, whichever the checkpoint holds (config.model_overrides may change it).
    params = model_source.read(source, stacked=model_config(config).scan_layers)
    flat = traverse_util.flatten_dict(params, sep="/")
    backbone = {k: v for k, v in flat.items() if k.startswith(BACKBONE + "/")}
    if not backbone:
        raise ConfigError(f"config.init_checkpoint={config.init_checkpoint!r}: no {BACKBONE}/... parameters in it")
    return backbone


def check_backbone(stage_spec: Spec, backbone: dict[str, np.ndarray]) -> None:
    """Every backbone parameter of the model is in the checkpoint, with its shape."""
    flat = model_source.flat_shapes(partitioning.unbox_without_constraints(
        jax.eval_shape(stage_spec.init_params, jax.random.key(0))))
    missing = sorted(k for k in flat if k.startswith(BACKBONE + "/") and k not in backbone)
    if missing:
        raise ConfigError(f"config.init_checkpoint lacks {len(missing)} backbone parameters of this model, "
                          f"e.g. {missing[:3]}; do the checkpoint's config and config.model_overrides match?")
    for key, shape in flat.items():
        if key in backbone and tuple(shape) != backbone[key].shape:
            raise ConfigError(f"config.init_checkpoint: {key} has shape {backbone[key].shape}, the model wants "
                              f"{tuple(shape)}")


def with_backbone(params: Any, backbone: dict[str, jax.Array]) -> Any:
    """The initialized tree with every backbone leaf taken from the checkpoint (checked by check_backbone)."""
    flat = traverse_util.flatten_dict(params, sep="/")
    flat.update({k: jnp.asarray(backbone[k], flat[k].dtype) for k in flat if k in backbone})
    return traverse_util.unflatten_dict(flat, sep="/")


def _read_backbone(config: ml_collections.ConfigDict, stage_spec: Spec) -> Optional[dict[str, np.ndarray]]:
    """config.init_checkpoint's backbone, checked against the model (before any data work), or None."""
    backbone = init_backbone(config)
    if backbone is not None:
        check_backbone(stage_spec, backbone)
    return backbone


def _process() -> dict[str, int]:
    return dict(process_index=jax.process_index(), process_count=jax.process_count())


def _spec(name: str, model, model_cfg: MobileBertConfig, objective: objectives.PerExampleObjective, seq_len: int,
          label: dict[str, jax.ShapeDtypeStruct]) -> Spec:
    tokens = {k: jax.ShapeDtypeStruct((seq_len,), jnp.int32) for k in ("input_ids", "input_mask", "segment_ids")}
    return Spec(
        name=name, objective=objective,
        init_params=lambda rng: model.init(rng, jnp.zeros((1, seq_len), jnp.int32))["params"],
        example={**tokens, **label}, tokens_per_example=seq_len,
        # Forward + backward = 3 x the forward's matmul FLOPs.
        train_flops_per_example=3 * flops.encoder_flops_per_token(model_cfg, seq_len) * seq_len, models=(model_cfg,))


def _task(config, stage_spec: Spec, backbone: Optional[dict[str, np.ndarray]], train_arrays: dict[str, np.ndarray],
          eval_arrays: Optional[dict[str, np.ndarray]], describe: str) -> StageIO:
    """The data as batches; the checkpoint's `backbone` put in on a fresh start."""
    train_iterator = ShuffledBatches(train_arrays, config.batch_size, seed=config.seed, **_process())

    def eval_batches():
        return padded_batches(eval_arrays, config.eval.batch_size, **_process())

    def start_from(params, frozen, shardings):
        del frozen
        return jax.jit(with_backbone, out_shardings=shardings, donate_argnums=0)(params, backbone)

    return StageIO(spec=stage_spec, describe=f"{describe}; {train_iterator.batches_per_epoch} batches per epoch",
                train_iterator=train_iterator, eval_batches=eval_batches if eval_arrays is not None else None,
                start_from=start_from if backbone is not None else None)


def glue_spec(config: ml_collections.ConfigDict) -> Spec:
    dataset = glue.get_task(config.task)
    model_cfg, seq_len = model_config(config), config.data.max_seq_length
    model = glue_model(config)
    label = jax.ShapeDtypeStruct((), jnp.float32 if dataset.is_regression else jnp.int32)
    return _spec(f"glue_{dataset.name}", model, model_cfg, objectives.for_glue(model, dataset.is_regression),
                 seq_len, {"label": label})


def read_glue(config: ml_collections.ConfigDict, workdir: str, stage_spec: Spec) -> StageIO:
    del workdir
    backbone = _read_backbone(config, stage_spec)
    dataset = glue.get_task(config.task)
    tokenizer = load_tokenizer(config.data.tokenizer)
    seq_len = config.data.max_seq_length
    train = glue.glue_features(dataset, glue_examples(config, dataset, "train"), tokenizer, seq_len)
    dev = glue.glue_features(dataset, glue_examples(config, dataset, dataset.eval_splits[0]), tokenizer,
                             seq_len) if config.eval.get("enabled", True) else None
    return _task(config, stage_spec, backbone, train, dev,
                 f"GLUE {dataset.name}: {len(train['label']):,} training examples, sequences of {seq_len}, "
                 f"{'regression' if dataset.is_regression else f'{dataset.num_labels} classes'}")


def squad_spec(config: ml_collections.ConfigDict) -> Spec:
    model_cfg = model_config(config)
    model = squad_model(config)
    positions = {k: jax.ShapeDtypeStruct((), jnp.int32) for k in ("start_positions", "end_positions")}
    return _spec(f"squad_v{config.version}", model, model_cfg, objectives.Spans(model),
                 squad_feature_options(config)["max_seq_length"], positions)


def read_squad(config: ml_collections.ConfigDict, workdir: str, stage_spec: Spec) -> StageIO:
    del workdir
    backbone = _read_backbone(config, stage_spec)
    tokenizer = load_tokenizer(config.data.tokenizer)
    options = squad_feature_options(config)
    train = squad_data.build_features(squad_examples(config, "train"), tokenizer, **options).arrays
    dev = squad_data.build_features(squad_examples(config, "dev"), tokenizer, **options).arrays \
        if config.eval.get("enabled", True) else None
    return _task(config, stage_spec, backbone, train, dev,
                 f"SQuAD v{config.version}: {len(train['input_ids']):,} training features, sequences of "
                 f"{options['max_seq_length']}")


GLUE_SCORING = Scoring(model=glue_model, evaluate=evaluate.evaluate_glue, held_out=evaluate.glue_held_out,
                       calibration=evaluate.glue_calibration, labels=evaluate.glue_labels)
SQUAD_SCORING = Scoring(model=squad_model, evaluate=evaluate.evaluate_squad, held_out=evaluate.squad_held_out,
                        calibration=evaluate.squad_calibration, labels=evaluate.squad_labels)

GLUE = Stage(spec=glue_spec, read=read_glue, inherit=inherit, scoring=GLUE_SCORING, sections=dict(data=GLUE_DATA))
SQUAD = Stage(spec=squad_spec, read=read_squad, inherit=inherit, scoring=SQUAD_SCORING,
              sections=dict(data=SQUAD_DATA))

