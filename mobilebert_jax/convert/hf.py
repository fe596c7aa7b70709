"""Import and export of HF MobileBERT directories (`config.json` + weights)."""

from __future__ import annotations

import json
import logging
import os
import re
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from safetensors import SafetensorError
from safetensors.numpy import load, save

from mobilebert_jax import modeling, storage
from mobilebert_jax.errors import ConfigError
from mobilebert_jax.config import HF_QUIRK_NORM_EPS, MobileBertConfig
from mobilebert_jax.convert import names
from mobilebert_jax.convert.torch_bin import load_torch_bin
from mobilebert_jax.modeling import stacking
from mobilebert_jax.errors import CheckpointError
from mobilebert_jax.partitioning import unbox_without_constraints

log = logging.getLogger(__name__)

Params = dict[str, Any]

# HF class name -> (our model class, whether it takes num_labels).
ARCHITECTURES = {
    "MobileBertForPreTraining": (modeling.MobileBertForPreTraining, False),
    "MobileBertForMaskedLM": (modeling.MobileBertForMaskedLM, False),
    "MobileBertForSequenceClassification": (modeling.MobileBertForSequenceClassification, True),
    "MobileBertForTokenClassification": (modeling.MobileBertForTokenClassification, True),
    "MobileBertForQuestionAnswering": (modeling.MobileBertForQuestionAnswering, False),
    "MobileBertForMultipleChoice": (modeling.MobileBertForMultipleChoice, False),
    "MobileBertModel": (modeling.MobileBertModel, False),
}
_TOP_LEVEL = ("mobilebert", "cls", "classifier", "qa_outputs")
# Present in HF files but not parameters of ours: a buffer and the decoder's bias (HF's alias of
# `cls.predictions.bias`); the decoder's weight too while it is tied to the word table.
_DERIVED = ("mobilebert.embeddings.position_ids", "cls.predictions.decoder.bias")
_TIED_DECODER = "cls.predictions.decoder.weight"
_UNUSED_TRANSFORMATION = ("mobilebert.embeddings.embedding_transformation.weight",
                          "mobilebert.embeddings.embedding_transformation.bias")
# HF builds each layer's `bottleneck.attention` whenever key_query_shared_bottleneck is set, but with
# use_bottleneck_attention the block's attention reads the input bottleneck, so it is never used.
_UNUSED_BOTTLENECK_ATTENTION = re.compile(r"^mobilebert\.encoder\.layer\.\d+\.bottleneck\.attention\.")


def build_model(config: MobileBertConfig, architecture: str, num_labels: int = 2) -> nn.Module:
    if architecture not in ARCHITECTURES:
        raise CheckpointError(f"unsupported architecture {architecture!r}; supported: {sorted(ARCHITECTURES)}")
    cls, takes_labels = ARCHITECTURES[architecture]
    if architecture == "MobileBertModel":
        return cls(config, add_pooling_layer=config.classifier_activation)
    return cls(config, num_labels=num_labels) if takes_labels else cls(config)


def expected_shapes(config: MobileBertConfig, architecture: str, num_labels: int = 2) -> dict[tuple, tuple]:
    """Flat Flax path -> shape, as the model would initialize them (no compute)."""
    model = build_model(config, architecture, num_labels)
    ids = jnp.zeros((1, 2, 4) if architecture == "MobileBertForMultipleChoice" else (1, 4), jnp.int32)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), ids))["params"]
    flat = traverse_util.flatten_dict(unbox_without_constraints(shapes))
    if architecture == "MobileBertModel":  # keep the `mobilebert` prefix every other model has
        flat = {("mobilebert", *k): v for k, v in flat.items()}
    return {k: tuple(v.shape) for k, v in flat.items()}


# ---------------------------------------------------------------------------
# Reading.
# ---------------------------------------------------------------------------
def read_hf_weights(path: str) -> dict[str, np.ndarray]:
    """All tensors of an HF directory (safetensors, sharded safetensors, or .bin)."""
    if not storage.path(path).is_dir():
        raise CheckpointError(f"{path}: expected an HF model directory (config.json + weights)")
    single = os.path.join(path, "model.safetensors")
    index = os.path.join(path, "model.safetensors.index.json")
    torch_bin = os.path.join(path, "pytorch_model.bin")
    if storage.path(single).exists():
        return _load_safetensors(single)
    if storage.path(index).exists():
        shards = sorted(set(json.loads(storage.path(index).read_text())["weight_map"].values()))
        out: dict[str, np.ndarray] = {}
        for shard in shards:
            out.update(_load_safetensors(os.path.join(path, shard)))
        return out
    if storage.path(torch_bin).exists():
        return load_torch_bin(torch_bin)
    raise CheckpointError(f"{path}: no weights found; expected model.safetensors, model.safetensors.index.json "
                          f"or pytorch_model.bin, found {sorted(p.name for p in storage.path(path).iterdir())}")


def _load_safetensors(path: str) -> dict[str, np.ndarray]:
    try:
        return load(storage.path(path).read_bytes())
    except SafetensorError as e:  # truncated, or not a safetensors file at all
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None


def _infer_architecture(hf_config: dict, keys: set[str]) -> str:
    for arch in hf_config.get("architectures") or []:
        if arch in ARCHITECTURES:
            return arch
    if "cls.seq_relationship.weight" in keys:
        return "MobileBertForPreTraining"
    if "cls.predictions.bias" in keys:
        return "MobileBertForMaskedLM"
    if "qa_outputs.weight" in keys:
        return "MobileBertForQuestionAnswering"
    if "classifier.weight" in keys:
        return "MobileBertForSequenceClassification"
    return "MobileBertModel"


def params_from_hf_state(config: MobileBertConfig, state: dict[str, np.ndarray], architecture: str,
                         source: str = "checkpoint") -> Params:
    """HF state dict -> our nested params, checked tensor by tensor."""
    if state and not any(k.split(".")[0] in _TOP_LEVEL for k in state):
        state = {f"mobilebert.{k}": v for k, v in state.items()}  # a bare MobileBertModel
    if not config.tie_word_embeddings and "cls.predictions.decoder.bias" in state:
        # Untied, transformers >= 5 adds `decoder.bias` (its own parameter, the one it uses) and leaves
        # `cls.predictions.bias` unused; older versions alias the two.
        state = dict(state)
        state["cls.predictions.bias"] = state.pop("cls.predictions.decoder.bias")
    num_labels = 2
    if "classifier.weight" in state:
        num_labels = int(state["classifier.weight"].shape[0])
    expected = expected_shapes(config, architecture, num_labels)

    flat: dict[tuple, np.ndarray] = {}
    unexpected = []
    for name, array in state.items():
        if name in _DERIVED or (name in _UNUSED_TRANSFORMATION and not config.has_embedding_transformation) \
                or (name == _TIED_DECODER and config.tie_word_embeddings) \
                or (_UNUSED_BOTTLENECK_ATTENTION.match(name) and _has_unused_bottleneck_attention(config)):
            continue
        path, transpose = names.hf_to_flax(name)
        if path not in expected:
            unexpected.append(name)
            continue
        if np.asarray(array).dtype.kind != "f" and np.asarray(array).dtype.name != "bfloat16":
            raise CheckpointError(f"{source}: tensor {name} has dtype {np.asarray(array).dtype}; weights must be "
                                  "floating point (an integer tensor is a different, e.g. quantized, format)")
        array = np.asarray(array, dtype=np.float32)
        if not np.isfinite(array).all():
            raise CheckpointError(f"{source}: tensor {name} has {int((~np.isfinite(array)).sum())} non-finite "
                                  f"(NaN or infinite) values of {array.size}")
        if transpose:
            array = array.T
        if array.shape != expected[path]:
            raise CheckpointError(
                f"{source}: tensor {name} (parameter {'/'.join(path)}) has shape {array.shape}, "
                f"the {architecture} config expects {expected[path]}")
        flat[path] = np.ascontiguousarray(array)
    if unexpected:
        raise CheckpointError(f"{source}: tensor(s) the {architecture} config does not have: {sorted(unexpected)}")
    missing = sorted(set(expected) - set(flat))
    if missing:
        pretty = [f"{names.flax_to_hf(p)[0]} (parameter {'/'.join(p)})" for p in missing]
        raise CheckpointError(f"{source}: missing tensor(s): {pretty}")
    return jax.tree.map(jnp.asarray, traverse_util.unflatten_dict(flat))


def _has_unused_bottleneck_attention(config: MobileBertConfig) -> bool:
    return config.use_bottleneck and config.use_bottleneck_attention and config.key_query_shared_bottleneck


def from_hf(path: str, architecture: Optional[str] = None) -> tuple[MobileBertConfig, Params]:
    """An HF MobileBERT directory -> (config, params); params keep HF's layout
    (`mobilebert`, `cls`, `classifier`, ...) for the matching model class."""
    if not storage.path(path).is_dir():
        raise CheckpointError(f"{path}: expected an HF model directory (config.json + weights)")
    config_path = os.path.join(path, "config.json")
    config = MobileBertConfig.from_hf_json(config_path)
    hf_config = json.loads(storage.path(config_path).read_text())
    state = read_hf_weights(path)
    arch = architecture or _infer_architecture(hf_config, set(state))
    return config, params_from_hf_state(config, state, arch, source=path)


# ---------------------------------------------------------------------------
# Writing.
# ---------------------------------------------------------------------------
def architecture_of(params: Params) -> str:
    if "cls" in params:
        return "MobileBertForPreTraining" if "seq_relationship" in params["cls"] else "MobileBertForMaskedLM"
    if "qa_outputs" in params:
        return "MobileBertForQuestionAnswering"
    if "classifier" in params:
        return "MobileBertForSequenceClassification"
    return "MobileBertModel"


def check_hf_expressible(config: MobileBertConfig) -> None:
    if config.use_bottleneck and not config.use_bottleneck_attention and not config.key_query_shared_bottleneck:
        raise ConfigError(
            "HF MobileBERT cannot represent this config (use_bottleneck=True with key_query_shared_bottleneck=False "
            "and use_bottleneck_attention=False, e.g. the IB-BERT teacher): its query/key projections take the "
            f"{config.intra_bottleneck_size}-d bottleneck, not the {config.hidden_size}-d block input")
    differences = []
    if config.attention_mask_mode != "additive":
        differences.append("attention_mask_mode='replace' (HF adds a large negative number)")
    if config.trigram_respects_padding:
        differences.append("trigram_respects_padding=True (HF lets padding leak into the trigram)")
    if config.normalization_type == "layer_norm" and config.outer_norm_eps != HF_QUIRK_NORM_EPS:
        differences.append(f"embedding/output LayerNorm epsilon {config.outer_norm_eps} (HF uses 1e-5)")
    if differences:
        log.warning("HF will compute this model slightly differently on padded inputs or norms: %s",
                    "; ".join(differences))


def to_hf(config: MobileBertConfig, params: Params, path: str, architecture: Optional[str] = None) -> str:
    """Writes an HF directory that `transformers.<architecture>.from_pretrained` loads.

    A scanned model's stacked layers (`scan_layers`) are written unrolled, as HF has them."""
    check_hf_expressible(config)
    params, config = stacking.unstack(nn.unbox(params)), config.replace(scan_layers=False)
    if "mobilebert" not in params:
        raise CheckpointError("params have no 'mobilebert' subtree; pass the whole model's params "
                              "(for a bare MobileBertModel, wrap them as {'mobilebert': params})")
    arch = architecture or architecture_of(params)
    flat = traverse_util.flatten_dict(params)
    num_labels = int(flat[("classifier", "kernel")].shape[-1]) if ("classifier", "kernel") in flat else 2
    expected = expected_shapes(config, arch, num_labels)
    for p, shape in expected.items():
        if p not in flat:
            raise CheckpointError(f"parameter {'/'.join(p)} missing for {arch}")
        if tuple(flat[p].shape) != shape:
            raise CheckpointError(f"parameter {'/'.join(p)} has shape {tuple(flat[p].shape)}, expected {shape}")
    extra = sorted("/".join(p) for p in set(flat) - set(expected))
    if extra:
        raise CheckpointError(f"parameter(s) {extra} do not belong to {arch}")

    state = {}
    for p, value in flat.items():
        name, transpose = names.flax_to_hf(p)
        value = np.asarray(jax.device_get(value), dtype=np.float32)
        state[name] = np.ascontiguousarray(value.T if transpose else value)
    if not config.has_embedding_transformation:
        # HF always builds this layer, even where it never uses it.
        state[_UNUSED_TRANSFORMATION[0]] = np.zeros((config.hidden_size, config.embedding_size), np.float32)
        state[_UNUSED_TRANSFORMATION[1]] = np.zeros((config.hidden_size,), np.float32)
    if not config.tie_word_embeddings and "cls.predictions.bias" in state:
        state["cls.predictions.decoder.bias"] = state["cls.predictions.bias"]
    if _has_unused_bottleneck_attention(config):
        b, h = config.intra_bottleneck_size, config.hidden_size
        for i in range(config.num_hidden_layers):
            prefix = f"mobilebert.encoder.layer.{i}.bottleneck.attention."
            state[prefix + "dense.weight"] = np.zeros((b, h), np.float32)
            for leaf in ("dense.bias", "LayerNorm.weight", "LayerNorm.bias"):
                state[prefix + leaf] = np.zeros((b,), np.float32)

    storage.makedirs(path)
    hf_config = config.to_hf_dict()
    hf_config["architectures"] = [arch]
    if arch in ("MobileBertForSequenceClassification", "MobileBertForTokenClassification"):
        hf_config["id2label"] = {str(i): f"LABEL_{i}" for i in range(num_labels)}
        hf_config["label2id"] = {f"LABEL_{i}": i for i in range(num_labels)}
    storage.path(path, "config.json").write_text(json.dumps(hf_config, indent=2, sort_keys=True) + "\n")
    storage.path(path, "model.safetensors").write_bytes(save(state, metadata={"format": "pt"}))
    return path
