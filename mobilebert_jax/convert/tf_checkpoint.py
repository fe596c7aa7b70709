"""Import of the original TensorFlow MobileBERT checkpoints, with the `bert_config.json` they were released with:
google-research's TF1 name-based checkpoints (`bert/encoder/layer_N/...`) and TF2 Model Garden object-based ones
(`encoder/layer_with_weights-K/...`, `masked_lm/...`, as `tf.train.Checkpoint(encoder=..., masked_lm=...)` saves
Model Garden's `MobileBERTEncoder` and `MobileBertMaskedLM`).

The released weights were trained with TF1's semantics, so the imported config keeps them: the attention mask
replaces masked scores with -6 (`attention_mask_mode="replace"`) and every LayerNorm uses `layer_norm_eps`
(1e-12, TF1's epsilon) rather than HF's 1e-5. Every variable in the checkpoint is either placed or named in the
one error that refuses it; only optimizer slots, step counters and a TF2 checkpoint's bookkeeping are passed over
(and counted), and the heads the checkpoint lacks are reported, never initialized. TensorFlow is imported only
here, when a checkpoint is read.
"""

from __future__ import annotations

import json
import re
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from flax import traverse_util

from mobilebert_jax.config import MobileBertConfig
from mobilebert_jax.convert.hf import expected_shapes
from mobilebert_jax.errors import CheckpointError, ConfigError

# TF1 BertConfig's defaults (google-research mobilebert/modeling.py), for fields a bert_config.json leaves out;
# embedding_size and intra_bottleneck_size default to hidden_size there.
_TF1_DEFAULTS = dict(
    hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072, hidden_act="gelu",
    hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1, max_position_embeddings=512, type_vocab_size=16,
    initializer_range=0.02, trigram_input=False, use_bottleneck=False, use_bottleneck_attention=False,
    key_query_shared_bottleneck=False, num_feedforward_networks=1, normalization_type="layer_norm",
    classifier_activation=True)
# TF1's "gelu" is the tanh approximation, which this project calls "gelu_new" (its "gelu" is the erf form).
_TF1_ACTIVATIONS = {"gelu": "gelu_new", "relu": "relu", "relu6": "relu6", "tanh": "tanh"}
# The epsilon of TF1's contrib layer_norm.
TF_LAYER_NORM_EPS = 1e-12

# Variables that are training state, not the model: TF1 Adam/LAMB slots and step counters.
_TF1_SLOT = re.compile(r"(^|/)(global_step|beta1_power|beta2_power|good_steps|loss_scale)$"
                       r"|/(adam_m|adam_v|lamb_m|lamb_v|Adam|Adam_1|Momentum)$")

_HEADS = {"MobileBertForPreTraining": "the MLM head (cls/predictions) and the NSP head (cls/seq_relationship)",
          "MobileBertForMaskedLM": "the MLM head (cls/predictions)", "MobileBertModel": "no head"}


def read_bert_config(path: str) -> MobileBertConfig:
    """google-research's bert_config.json (e.g. uncased_L-24_H-128_B-512_A-4_F-4_OPT) with TF1's semantics."""
    try:
        d = json.loads(epath.Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"--config={path}: no such file") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"--config={path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
    if not isinstance(d, dict):
        raise ConfigError(f"--config={path}: expected a JSON object at the top level")
    if "vocab_size" not in d:
        raise ConfigError(f"--config={path}: no vocab_size (a TF1 bert_config.json always has it)")
    known = set(_TF1_DEFAULTS) | {"vocab_size", "embedding_size", "intra_bottleneck_size"}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ConfigError(f"--config={path}: field(s) {unknown} are not TF1 BertConfig fields this import knows "
                          f"({sorted(known)})")
    fields = {**_TF1_DEFAULTS, **d}
    fields.setdefault("embedding_size", fields["hidden_size"])
    fields.setdefault("intra_bottleneck_size", fields["hidden_size"])
    for size in ("embedding_size", "intra_bottleneck_size"):
        if fields[size] is None:
            fields[size] = fields["hidden_size"]
    act = fields["hidden_act"]
    if act not in _TF1_ACTIVATIONS:
        raise ConfigError(f"--config={path}: hidden_act {act!r} is not one TF1 BERT has ({sorted(_TF1_ACTIVATIONS)})")
    fields["hidden_act"] = _TF1_ACTIVATIONS[act]
    try:
        return MobileBertConfig(**fields, layer_norm_eps=TF_LAYER_NORM_EPS, attention_mask_mode="replace",
                                embedding_and_output_norm_eps=None)
    except ConfigError as e:
        raise ConfigError(f"--config={path}: {e}") from None


# ---------------------------------------------------------------------------
# Names.
# ---------------------------------------------------------------------------
# A placement: the Flax path and how the stored array becomes the parameter.
Placement = tuple[tuple[str, ...], Callable[[np.ndarray], np.ndarray]]
_KEEP = np.asarray


def _transposed(a: np.ndarray) -> np.ndarray:
    return np.asarray(a).T


_TF1_NORM_LEAVES = {"gamma": "scale", "beta": "bias"}
_TF1_TABLES = ("word_embeddings", "position_embeddings", "token_type_embeddings")
_TF1_HEADS = {
    "cls/predictions/output_bias": (("cls", "predictions", "bias"), _KEEP),
    # TF1 stores the extra output matrix [vocab, hidden - embedding]; ours is its transpose.
    "cls/predictions/extra_output_weights": (("cls", "predictions", "extra_output_weights"), _transposed),
    "cls/seq_relationship/output_weights": (("cls", "seq_relationship", "kernel"), _transposed),
    "cls/seq_relationship/output_bias": (("cls", "seq_relationship", "bias"), _KEEP),
}


def tf1_placement(name: str) -> Optional[Placement]:
    """A TF1 variable name -> its placement, or None when it is no MobileBERT parameter."""
    if name in _TF1_HEADS:
        return _TF1_HEADS[name]
    parts = name.split("/")
    if parts[0] == "bert":
        parts[0] = "mobilebert"
    elif parts[:3] != ["cls", "predictions", "transform"]:
        return None
    out = [f"ffn_{p[len('ffn_layer_'):]}" if re.fullmatch(r"ffn_layer_\d+", p)
           else "LayerNorm" if p == "FakeLayerNorm" else p for p in parts]
    if out[-1] in _TF1_TABLES and len(out) == 3 and out[1] == "embeddings":
        return (*out, "embedding"), _KEEP
    if len(out) >= 2 and out[-2] == "LayerNorm" and out[-1] in _TF1_NORM_LEAVES:
        return (*out[:-1], _TF1_NORM_LEAVES[out[-1]]), _KEEP
    if out[-1] in ("kernel", "bias"):
        return tuple(out), _KEEP
    return None


# Model Garden's MobileBERTEncoder is a Keras functional model that turns attribute tracking off, so its
# checkpoint names its layers by position among those with weights: 0 the embeddings, 1..L the blocks, L + 1 the
# pooler. Inside them the keys are the layers' attribute names; keys end in `/.ATTRIBUTES/VARIABLE_VALUE`.
_TF2_VALUE = "/.ATTRIBUTES/VARIABLE_VALUE"
_TF2_BOOKKEEPING = re.compile(r"^(_CHECKPOINTABLE_OBJECT_GRAPH|save_counter/|optimizer/|global_step/)"
                              r"|/\.OPTIMIZER_SLOT/")
_TF2_EMBEDDINGS = {"word_embedding/embeddings": ("word_embeddings", "embedding"),
                   "type_embedding/embeddings": ("token_type_embeddings", "embedding"),
                   "pos_embedding/embeddings": ("position_embeddings", "embedding"),
                   "word_embedding_proj/kernel": ("embedding_transformation", "kernel"),
                   "word_embedding_proj/bias": ("embedding_transformation", "bias"),
                   "layer_norm/gamma": ("LayerNorm", "scale"), "layer_norm/beta": ("LayerNorm", "bias")}
_TF2_LEAVES = {"kernel": "kernel", "bias": "bias", "gamma": "scale", "beta": "bias"}
# block_layers/<group>/<index> -> our module path; the norms are NoNorm or LayerNorm (gamma/beta either way).
_TF2_BLOCK = {("bottleneck_input", "0"): ("bottleneck", "input", "dense"),
              ("bottleneck_input", "1"): ("bottleneck", "input", "LayerNorm"),
              ("kq_shared_bottleneck", "0"): ("bottleneck", "attention", "dense"),
              ("kq_shared_bottleneck", "1"): ("bottleneck", "attention", "LayerNorm"),
              ("attention", "1"): ("attention", "output", "LayerNorm"),
              ("bottleneck_output", "0"): ("output", "bottleneck", "dense"),
              ("bottleneck_output", "2"): ("output", "bottleneck", "LayerNorm")}
_TF2_HEADS = {"masked_lm/embedding_table": ("mobilebert", "embeddings", "word_embeddings", "embedding"),
              "masked_lm/dense/kernel": ("cls", "predictions", "transform", "dense", "kernel"),
              "masked_lm/dense/bias": ("cls", "predictions", "transform", "dense", "bias"),
              "masked_lm/layer_norm/gamma": ("cls", "predictions", "transform", "LayerNorm", "scale"),
              "masked_lm/layer_norm/beta": ("cls", "predictions", "transform", "LayerNorm", "bias"),
              "masked_lm/output_bias.Sbias": ("cls", "predictions", "bias")}


def _heads_merged(a: np.ndarray) -> np.ndarray:
    """Keras MultiHeadAttention's [in, heads, head_dim] kernel or [heads, head_dim] bias -> [in, out] / [out]."""
    a = np.asarray(a)
    return a.reshape(-1) if a.ndim == 2 else a.reshape(a.shape[0], -1)


def _output_merged(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)  # the attention output projection's [heads, head_dim, out]
    return a.reshape(-1, a.shape[-1])


def tf2_placement(key: str, config: MobileBertConfig) -> Optional[Placement]:
    """A Model Garden checkpoint key (without `/.ATTRIBUTES/VARIABLE_VALUE`) -> its placement, or None."""
    if key in _TF2_HEADS:
        return _TF2_HEADS[key], _KEEP
    if key == "masked_lm/extra_output_weights":
        return ("cls", "predictions", "extra_output_weights"), _transposed
    m = re.fullmatch(r"encoder/layer_with_weights-(\d+)/(.+)", key)
    if not m:
        return None
    position, rest = int(m.group(1)), m.group(2)
    if position == 0:
        return (("mobilebert", "embeddings", *_TF2_EMBEDDINGS[rest]), _KEEP) if rest in _TF2_EMBEDDINGS else None
    if position == config.num_hidden_layers + 1 and rest in ("kernel", "bias"):
        return ("mobilebert", "pooler", "dense", rest), _KEEP
    if position > config.num_hidden_layers:
        return None
    layer = ("mobilebert", "encoder", f"layer_{position - 1}")
    m = re.fullmatch(r"block_layers/(\w+)/(\d+)/(kernel|bias|gamma|beta)", rest)
    if m and (m.group(1), m.group(2)) in _TF2_BLOCK:
        return (*layer, *_TF2_BLOCK[m.group(1), m.group(2)], _TF2_LEAVES[m.group(3)]), _KEEP
    m = re.fullmatch(r"block_layers/attention/0/_(query|key|value|output)_dense/(kernel|bias)", rest)
    if m:
        name, leaf = m.groups()
        if name == "output":
            return (*layer, "attention", "output", "dense", leaf), _output_merged if leaf == "kernel" else _KEEP
        return (*layer, "attention", "self", name, leaf), _heads_merged
    m = re.fullmatch(r"block_layers/ffn/(\d+)/([012])/(kernel|bias|gamma|beta)", rest)
    if m:
        # Model Garden numbers every FFN from 0; TF1 and this model give the last one the block's own
        # intermediate/output names and number only those before it.
        index, part, leaf = int(m.group(1)), m.group(2), m.group(3)
        ffn = (f"ffn_{index}",) if index < config.num_feedforward_networks - 1 else ()
        module = {"0": ("intermediate", "dense"), "1": ("output", "dense"), "2": ("output", "LayerNorm")}[part]
        return (*layer, *ffn, *module, _TF2_LEAVES[leaf]), _KEEP
    return None


# ---------------------------------------------------------------------------
# Reading.
# ---------------------------------------------------------------------------
def _tensorflow():
    try:
        import tensorflow as tf  # an optional extra: only this import needs it
    except ImportError:
        raise ConfigError("from-tf reads TensorFlow checkpoints with TensorFlow, which is not installed; "
                          "pip install 'mobilebert-jax[litert]' (or tensorflow>=2.21)") from None
    return tf


def read_variables(path: str) -> dict[str, np.ndarray]:
    """Every variable of a TF checkpoint: `path` is its prefix (model.ckpt-NNN) or a directory holding one."""
    tf = _tensorflow()
    prefix = path
    if epath.Path(path).is_dir():
        prefix = tf.train.latest_checkpoint(path)
        if prefix is None:
            raise CheckpointError(f"--input={path}: a directory with no TF checkpoint (no 'checkpoint' file "
                                  f"naming one); pass the checkpoint prefix, e.g. {path}/model.ckpt-NNN")
    try:
        reader = tf.train.load_checkpoint(prefix)
    except (tf.errors.NotFoundError, tf.errors.DataLossError, ValueError) as e:
        raise CheckpointError(f"--input={path}: not a readable TF checkpoint "
                              f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()}


def is_object_based(variables: dict[str, np.ndarray]) -> bool:
    """TF2's tf.train.Checkpoint writes its object graph beside the values; TF1's Saver does not."""
    return "_CHECKPOINTABLE_OBJECT_GRAPH" in variables


def place(config: MobileBertConfig, variables: dict[str, np.ndarray], source: str):
    """TF1 or TF2 variables -> (architecture, params, skipped names); the heads the checkpoint has decide the
    architecture."""
    object_based = is_object_based(variables)
    placed: dict[tuple, tuple[str, np.ndarray]] = {}
    skipped, unplaced, twice = [], [], []
    for name, array in variables.items():
        if object_based:
            if _TF2_BOOKKEEPING.search(name) or not name.endswith(_TF2_VALUE):
                skipped.append(name)
                continue
            placement = tf2_placement(name[: -len(_TF2_VALUE)], config)
        elif _TF1_SLOT.search(name):
            skipped.append(name)
            continue
        else:
            placement = tf1_placement(name)
        if placement is None:
            unplaced.append(name)
            continue
        path, transform = placement
        if path in placed:
            twice.append(f"{' and '.join(sorted((placed[path][0], name)))} (parameter {'/'.join(path)})")
        placed[path] = (name, transform(array))
    if twice:
        raise CheckpointError(f"{source}: two variables for one parameter: {'; '.join(sorted(twice))}")
    heads = {p[1] for p in placed if p[0] == "cls"}
    arch = ("MobileBertForPreTraining" if "seq_relationship" in heads
            else "MobileBertForMaskedLM" if "predictions" in heads else "MobileBertModel")
    expected = expected_shapes(config, arch)
    unplaced.extend(name for path, (name, _) in placed.items() if path not in expected)
    if unplaced:
        raise CheckpointError(f"{source}: variable(s) with no place in a MobileBERT of this config (the "
                              f"{arch} layout, {_HEADS[arch]}): {sorted(set(unplaced))}")
    bad = []
    out: dict[tuple, np.ndarray] = {}
    for path, (name, array) in placed.items():
        if array.dtype.kind != "f":
            bad.append(f"{name} has dtype {array.dtype}, not floating point")
        elif tuple(array.shape) != expected[path]:
            bad.append(f"{name} has shape {tuple(array.shape)} where the config expects {expected[path]} "
                       f"(parameter {'/'.join(path)})")
        elif not np.isfinite(array).all():
            bad.append(f"{name} has {int((~np.isfinite(array)).sum())} non-finite values")
        else:
            out[path] = np.ascontiguousarray(array, dtype=np.float32)
    if bad:
        raise CheckpointError(f"{source}: {'; '.join(bad)}")
    missing = sorted("/".join(p) for p in set(expected) - set(out))
    if missing:
        raise CheckpointError(f"{source}: the config ({_HEADS[arch]}) needs parameter(s) the checkpoint does not "
                              f"have: {missing}")
    return arch, jax.tree.map(jnp.asarray, traverse_util.unflatten_dict(out)), sorted(skipped)


def from_tf(checkpoint: str, config_path: str):
    """A TF1 or TF2 MobileBERT checkpoint and its bert_config.json -> (config, architecture, params, report line)."""
    config = read_bert_config(config_path)
    variables = read_variables(checkpoint)
    arch, params, skipped = place(config, variables, f"--input={checkpoint}")
    absent = {"MobileBertForPreTraining": [],
              "MobileBertForMaskedLM": ["NSP head (cls/seq_relationship)"],
              "MobileBertModel": ["MLM head (cls/predictions)", "NSP head (cls/seq_relationship)"]}[arch]
    kind = "TF2 object-based" if is_object_based(variables) else "TF1"
    report = (f"{kind} checkpoint: {len(variables) - len(skipped)} variables placed as {arch}; {len(skipped)} "
              f"optimizer slots, step counters and checkpoint bookkeeping skipped"
              + (f"; the checkpoint has no {' and no '.join(absent)}" if absent else ""))
    return config, arch, params, report
