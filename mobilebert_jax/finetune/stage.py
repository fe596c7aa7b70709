"""GLUE and SQuAD fine-tuning as `Stage`s of the generic trainer (train/stage.py).

The model starts from `config.init_checkpoint`: anything `model_source` reads
(a distillation or pretraining workdir, a checkpoint step, a params directory,
an HF directory or hub id). Its backbone (`mobilebert/...`) is copied onto the
freshly initialized model on a fresh start; the task head stays as initialized. Its tokenizer is the run's unless
`config.data.vocab` names the same one (train/lineage.py). With no checkpoint the model is trained from scratch
from `config.model` (smoke runs). `config.model_overrides` replaces fields
of the checkpoint's config (dropout for fine-tuning, the dtype).
"""

from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import traverse_util

from mobilebert_jax import flops, model_source, partitioning
from mobilebert_jax.config_schema import Schema
from mobilebert_jax.errors import ConfigError
from mobilebert_jax.config import MobileBertConfig
from mobilebert_jax.data.tokenizers import load_tokenizer
from mobilebert_jax.modeling import MobileBertForQuestionAnswering, MobileBertForSequenceClassification
from mobilebert_jax.finetune import glue, glue_tfds, objectives, squad_data
from mobilebert_jax.finetune.batching import ShuffledBatches, padded_batches
from mobilebert_jax.train.stage import Spec, Stage, StageIO

BACKBONE = "mobilebert"

# config.data of each fine-tuning stage; the values are the experiments' (finetune_glue.py, finetune_squad.py).
# Optional: tfds_data_dir ("": TFDS's default data_dir), skip_malformed (False: a malformed TSV row is an error).
GLUE_DATA = Schema(fields=("source", "glue_dir", "tfds_data_dir", "skip_malformed", "vocab", "scratch_vocab",
                           "max_seq_length"),
                   optional=dict(tfds_data_dir="", skip_malformed=False))
SQUAD_DATA = Schema(fields=("source", "train_file", "dev_file", "tfds_data_dir", "vocab", "scratch_vocab",
                            "max_seq_length", "doc_stride", "max_query_length"),
                    optional=dict(tfds_data_dir=""))


def model_config(config: ml_collections.ConfigDict) -> MobileBertConfig:
    """`config.model` with `config.model_overrides`; train/lineage.py has made `config.model` the init checkpoint's."""
    overrides = dict(config.get("model_overrides", {}) or {})
    base = MobileBertConfig.from_dict(config.model.to_dict())
    return base.replace(**overrides) if overrides else base


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
        train_flops_per_example=3 * flops.encoder_flops_per_token(model_cfg, seq_len) * seq_len)


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


def glue_examples(config: ml_collections.ConfigDict, task: glue.GlueDataset, split: str) -> list[glue.GlueExample]:
    data = GLUE_DATA.read(config.data, "config.data")
    if data["source"] == "tsv":
        return glue.read_split(task, data["glue_dir"], split, skip_malformed=data["skip_malformed"])
    if data["source"] == "tfds":
        return glue_tfds.read_tfds(task, split, data["tfds_data_dir"] or None)
    raise ConfigError(f"config.data.source={data['source']!r}: choose 'tsv' or 'tfds'")


def glue_spec(config: ml_collections.ConfigDict) -> Spec:
    dataset = glue.get_task(config.task)
    model_cfg, seq_len = model_config(config), config.data.max_seq_length
    model = MobileBertForSequenceClassification(model_cfg, num_labels=dataset.num_labels)
    label = jax.ShapeDtypeStruct((), jnp.float32 if dataset.is_regression else jnp.int32)
    return _spec(f"glue_{dataset.name}", model, model_cfg, objectives.for_glue(model, dataset.is_regression),
                 seq_len, {"label": label})


def read_glue(config: ml_collections.ConfigDict, workdir: str, stage_spec: Spec) -> StageIO:
    del workdir
    backbone = _read_backbone(config, stage_spec)
    dataset = glue.get_task(config.task)
    tokenizer = load_tokenizer(config.data.vocab)
    seq_len = config.data.max_seq_length
    train = glue.glue_features(dataset, glue_examples(config, dataset, "train"), tokenizer, seq_len)
    dev = glue.glue_features(dataset, glue_examples(config, dataset, dataset.eval_splits[0]), tokenizer,
                             seq_len) if config.eval.get("enabled", True) else None
    return _task(config, stage_spec, backbone, train, dev,
                 f"GLUE {dataset.name}: {len(train['label']):,} training examples, sequences of {seq_len}, "
                 f"{'regression' if dataset.is_regression else f'{dataset.num_labels} classes'}")


def squad_examples(config: ml_collections.ConfigDict, split: str) -> list[squad_data.SquadExample]:
    data = SQUAD_DATA.read(config.data, "config.data")
    if data["source"] == "json":
        return squad_data.read_squad_json(data["train_file"] if split == "train" else data["dev_file"],
                                          config.version)
    if data["source"] == "tfds":
        return squad_data.read_squad_tfds(config.version, "train" if split == "train" else "validation",
                                          data["tfds_data_dir"] or None)
    raise ConfigError(f"config.data.source={data['source']!r}: choose 'json' or 'tfds'")


def squad_feature_options(config: ml_collections.ConfigDict) -> dict[str, int]:
    d = config.data
    return dict(max_seq_length=d.max_seq_length, doc_stride=d.doc_stride, max_query_length=d.max_query_length)


def squad_spec(config: ml_collections.ConfigDict) -> Spec:
    model_cfg = model_config(config)
    model = MobileBertForQuestionAnswering(model_cfg)
    positions = {k: jax.ShapeDtypeStruct((), jnp.int32) for k in ("start_positions", "end_positions")}
    return _spec(f"squad_v{config.version}", model, model_cfg, objectives.Spans(model),
                 squad_feature_options(config)["max_seq_length"], positions)


def read_squad(config: ml_collections.ConfigDict, workdir: str, stage_spec: Spec) -> StageIO:
    del workdir
    backbone = _read_backbone(config, stage_spec)
    tokenizer = load_tokenizer(config.data.vocab)
    options = squad_feature_options(config)
    train = squad_data.build_features(squad_examples(config, "train"), tokenizer, **options).arrays
    dev = squad_data.build_features(squad_examples(config, "dev"), tokenizer, **options).arrays \
        if config.eval.get("enabled", True) else None
    return _task(config, stage_spec, backbone, train, dev,
                 f"SQuAD v{config.version}: {len(train['input_ids']):,} training features, sequences of "
                 f"{options['max_seq_length']}")


GLUE = Stage(glue_spec, read_glue, sections=dict(data=GLUE_DATA))
SQUAD = Stage(squad_spec, read_squad, sections=dict(data=SQUAD_DATA))
