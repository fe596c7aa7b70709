"""Model configuration: one frozen dataclass for every MobileBERT-family model.

The field names follow HF's `MobileBertConfig` so that `config.json` files move
both ways unchanged. Fields HF does not have (the attention-mask convention,
the computation dtype, ...) are written to `config.json` under the key
`mobilebert_jax`, which HF keeps and ignores.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Optional

# epath, not open(): configs live beside checkpoints, on gs:// as well (see storage.py; storage imports this module).
from etils import epath

from mobilebert_jax.errors import ConfigError

ACTIVATIONS = ("relu", "relu6", "gelu", "gelu_new", "gelu_pytorch_tanh", "gelu_fast", "tanh", "silu", "swish")
NORMALIZATIONS = ("no_norm", "layer_norm")
ATTENTION_MASK_MODES = (
    "replace",  # TF1 (the released checkpoint): s' = s * m + (1 - m) * (-6)
    "additive",  # HF and TF2: s' = s + (1 - m) * finfo(dtype).min
)
DTYPES = ("float32", "bfloat16")

# Fields that HF's MobileBertConfig has, in HF's order.
HF_FIELDS = (
    "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
    "hidden_act", "hidden_dropout_prob", "attention_probs_dropout_prob", "max_position_embeddings",
    "type_vocab_size", "initializer_range", "layer_norm_eps", "pad_token_id", "embedding_size",
    "trigram_input", "use_bottleneck", "intra_bottleneck_size", "use_bottleneck_attention",
    "key_query_shared_bottleneck", "num_feedforward_networks", "normalization_type",
    "classifier_activation", "classifier_dropout",
)
# HF builds the embedding norm and each layer's `output.LayerNorm` with
# nn.LayerNorm's default epsilon, ignoring `layer_norm_eps`.
HF_QUIRK_NORM_EPS = 1e-5




@dataclasses.dataclass(frozen=True)
class MobileBertConfig:
    """Every field of REFERENCE section 1, plus the options this project adds."""

    vocab_size: int = 30522
    hidden_size: int = 512  # inter-block width
    num_hidden_layers: int = 24
    num_attention_heads: int = 4
    intermediate_size: int = 512
    hidden_act: str = "relu"
    hidden_dropout_prob: float = 0.0
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    embedding_size: int = 128
    trigram_input: bool = True
    use_bottleneck: bool = True
    intra_bottleneck_size: int = 128
    use_bottleneck_attention: bool = False
    key_query_shared_bottleneck: bool = True
    num_feedforward_networks: int = 4
    normalization_type: str = "no_norm"
    classifier_activation: bool = False
    classifier_dropout: Optional[float] = None
    # HF's (PretrainedConfig) option: False gives the MLM head its own [V, E] decoder instead of the word table.
    tie_word_embeddings: bool = True
    # --- options HF does not have ---
    attention_mask_mode: str = "replace"
    # Epsilon of the embedding norm and each layer's `output.LayerNorm`; None
    # means `layer_norm_eps` (TF1). HF imports set 1e-5 (HF's quirk).
    embedding_and_output_norm_eps: Optional[float] = None
    # Zero the padded positions' embeddings before the trigram shift, so that
    # padding no longer leaks into the last real token (off: TF1 and HF leak).
    trigram_respects_padding: bool = False
    dtype: str = "float32"  # computation dtype; parameters stay float32
    remat: bool = False  # rematerialize each layer in the backward pass
    # Each Dense kernel's gradient as transpose(x) @ dy with the transpose materialized (primitives.py), instead
    # of the operand layout XLA picks. On XLA:CPU XLA's pick runs a slow transposed-operand matmul kernel; the
    # MobileBERT train step is 1.07x faster with this on (docs/training.md). Not measured on TPU or GPU.
    explicit_weight_gradients: bool = False
    # Run the L layers as one block under nn.scan, parameters stacked on a leading layer axis
    # (modeling/stacking.py): compiles the block once instead of L times. Not written to HF config.json:
    # HF and params directories always hold the unrolled layout.
    scan_layers: bool = False

    def __post_init__(self):
        _validate(self)

    # ---- derived sizes ----
    @property
    def true_hidden_size(self) -> int:
        """Width inside a block: the bottleneck if there is one."""
        return self.intra_bottleneck_size if self.use_bottleneck else self.hidden_size

    @property
    def attention_input_size(self) -> int:
        """Width of the tensor Q and K are projected from."""
        if self.use_bottleneck and (self.use_bottleneck_attention or self.key_query_shared_bottleneck):
            return self.intra_bottleneck_size
        return self.hidden_size

    @property
    def value_input_size(self) -> int:
        if self.use_bottleneck and self.use_bottleneck_attention:
            return self.intra_bottleneck_size
        return self.hidden_size

    @property
    def has_embedding_transformation(self) -> bool:
        return self.trigram_input or self.embedding_size != self.hidden_size

    @property
    def outer_norm_eps(self) -> float:
        if self.embedding_and_output_norm_eps is None:
            return self.layer_norm_eps
        return self.embedding_and_output_norm_eps

    @property
    def classifier_dropout_prob(self) -> float:
        if self.classifier_dropout is None:
            return self.hidden_dropout_prob
        return self.classifier_dropout

    def replace(self, **changes: Any) -> "MobileBertConfig":
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise ConfigError(f"MobileBertConfig has no field(s) {unknown}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "MobileBertConfig":
        unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ConfigError(f"unknown MobileBertConfig field(s) {unknown}")
        return cls(**d)

    # ---- HF config.json ----
    def to_hf_dict(self) -> dict:
        d = {name: getattr(self, name) for name in HF_FIELDS}
        d["model_type"] = "mobilebert"
        d["architectures"] = ["MobileBertForPreTraining"]
        d["tie_word_embeddings"] = self.tie_word_embeddings
        d["mobilebert_jax"] = {
            "attention_mask_mode": self.attention_mask_mode,
            "embedding_and_output_norm_eps": self.embedding_and_output_norm_eps,
            "trigram_respects_padding": self.trigram_respects_padding,
            "dtype": self.dtype,
        }
        return d

    @classmethod
    def from_hf_dict(cls, d: dict, source: str = "config.json") -> "MobileBertConfig":
        """Reads an HF config; without our own section, HF's semantics (quirks included)."""
        model_type = d.get("model_type", "mobilebert")
        if model_type != "mobilebert":
            raise ConfigError(f"{source}: model_type is {model_type!r}, expected 'mobilebert'")
        hf_defaults = _HF_DEFAULTS
        kwargs = {name: d.get(name, hf_defaults[name]) for name in HF_FIELDS}
        kwargs["tie_word_embeddings"] = d.get("tie_word_embeddings", True)
        ours = d.get("mobilebert_jax")
        if ours is None:
            kwargs.update(attention_mask_mode="additive", embedding_and_output_norm_eps=HF_QUIRK_NORM_EPS)
        else:
            if not isinstance(ours, dict):
                raise ConfigError(f"{source}: 'mobilebert_jax' must be an object, got {type(ours).__name__}")
            unknown = sorted(set(ours) - {f.name for f in dataclasses.fields(cls)})
            if unknown:
                raise ConfigError(f"{source}: unknown field(s) under 'mobilebert_jax': {unknown}")
            if ours.get("scan_layers"):
                raise ConfigError(f"{source}: 'mobilebert_jax.scan_layers' is true, but HF and params directories "
                                  f"always hold the unrolled layers; scan_layers belongs to the run that reads "
                                  f"them (config.model.scan_layers, or config.model_overrides when fine-tuning)")
            kwargs.update(ours)
        try:
            return cls(**kwargs)
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from None

    @classmethod
    def from_hf_json(cls, path: str) -> "MobileBertConfig":
        try:
            d = json.loads(epath.Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such file") from None
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
        if not isinstance(d, dict):
            raise ConfigError(f"{path}: expected a JSON object at the top level")
        return cls.from_hf_dict(d, source=path)


# HF's own defaults, used for fields a config.json leaves out.
_HF_DEFAULTS = dict(
    vocab_size=30522, hidden_size=512, num_hidden_layers=24, num_attention_heads=4, intermediate_size=512,
    hidden_act="relu", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.1, max_position_embeddings=512,
    type_vocab_size=2, initializer_range=0.02, layer_norm_eps=1e-12, pad_token_id=0, embedding_size=128,
    trigram_input=True, use_bottleneck=True, intra_bottleneck_size=128, use_bottleneck_attention=False,
    key_query_shared_bottleneck=True, num_feedforward_networks=4, normalization_type="no_norm",
    classifier_activation=True, classifier_dropout=None,
)


def _validate(c: MobileBertConfig) -> None:
    def fail(field: str, why: str):
        raise ConfigError(f"MobileBertConfig.{field}={getattr(c, field)!r}: {why}")

    for field in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                  "max_position_embeddings", "type_vocab_size", "embedding_size", "intra_bottleneck_size",
                  "num_feedforward_networks"):
        value = getattr(c, field)
        if isinstance(value, bool) or not isinstance(value, int):
            fail(field, "must be an integer")
        if value <= 0:
            fail(field, "must be positive")
    for field in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
        value = getattr(c, field)
        if not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
            fail(field, "must be a probability in [0, 1)")
    if c.classifier_dropout is not None and not 0.0 <= c.classifier_dropout < 1.0:
        fail("classifier_dropout", "must be None or a probability in [0, 1)")
    for field in ("initializer_range", "layer_norm_eps"):
        if not isinstance(getattr(c, field), (int, float)) or getattr(c, field) <= 0:
            fail(field, "must be a positive number")
    if c.embedding_and_output_norm_eps is not None and c.embedding_and_output_norm_eps <= 0:
        fail("embedding_and_output_norm_eps", "must be None or a positive number")
    for field in ("trigram_input", "use_bottleneck", "use_bottleneck_attention", "key_query_shared_bottleneck",
                  "classifier_activation", "trigram_respects_padding", "remat", "scan_layers", "tie_word_embeddings",
                  "explicit_weight_gradients"):
        if not isinstance(getattr(c, field), bool):
            fail(field, "must be true or false")
    if c.hidden_act not in ACTIVATIONS:
        fail("hidden_act", f"unknown activation; choose one of {list(ACTIVATIONS)}")
    if c.normalization_type not in NORMALIZATIONS:
        fail("normalization_type", f"unknown normalization; choose one of {list(NORMALIZATIONS)}")
    if c.attention_mask_mode not in ATTENTION_MASK_MODES:
        fail("attention_mask_mode", f"choose one of {list(ATTENTION_MASK_MODES)}")
    if c.dtype not in DTYPES:
        fail("dtype", f"choose one of {list(DTYPES)}")
    if not isinstance(c.pad_token_id, int) or not 0 <= c.pad_token_id < c.vocab_size:
        fail("pad_token_id", f"must be an id in [0, vocab_size={c.vocab_size})")
    if c.true_hidden_size % c.num_attention_heads:
        which = "intra_bottleneck_size" if c.use_bottleneck else "hidden_size"
        fail("num_attention_heads", f"does not divide {which}={c.true_hidden_size}")
    if c.use_bottleneck_attention and not c.use_bottleneck:
        fail("use_bottleneck_attention", "needs use_bottleneck=True")
    if c.embedding_size > c.hidden_size:
        # The MLM head splits the hidden vector into the tied embedding part and the rest.
        fail("embedding_size", f"must not exceed hidden_size={c.hidden_size} (the MLM head ties the first "
                               "embedding_size features to the word table)")


# ---------------------------------------------------------------------------
# Presets (REFERENCE section 1).
# ---------------------------------------------------------------------------
_PRESETS: dict[str, dict] = {
    # TF1's uncased_L-24_H-1024_B-512_A-4.json omits classifier_activation and TF1's BertConfig defaults it to
    # true: the teacher's NSP head reads a tanh pooler. The TF2 Model Garden's yaml sets it false (the raw [CLS]
    # vector): get_preset("ib_bert_large", classifier_activation=False), or
    # --config.model.classifier_activation=False on the teacher experiment (REFERENCE section 1).
    "ib_bert_large": dict(
        intra_bottleneck_size=1024, intermediate_size=4096, num_feedforward_networks=1,
        key_query_shared_bottleneck=False, normalization_type="layer_norm", hidden_act="gelu_new",
        hidden_dropout_prob=0.1, classifier_activation=True),
    "mobilebert": dict(),
    "mobilebert_tiny": dict(num_feedforward_networks=2, key_query_shared_bottleneck=False,
                            use_bottleneck_attention=True),
    "mobilebert_no_opt": dict(normalization_type="layer_norm", hidden_act="gelu_new"),
    "bert_base": dict(
        hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
        embedding_size=768, trigram_input=False, use_bottleneck=False, num_feedforward_networks=1,
        key_query_shared_bottleneck=False, normalization_type="layer_norm", hidden_act="gelu_new",
        hidden_dropout_prob=0.1),
}
# Small versions for tests and CPU smoke runs: same structure, tiny widths.
_SMALL = dict(vocab_size=512, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, embedding_size=32,
              intra_bottleneck_size=32, intermediate_size=64, max_position_embeddings=64)
_PRESETS.update({
    "ib_bert_test": {**_PRESETS["ib_bert_large"], **_SMALL, "intra_bottleneck_size": 128, "intermediate_size": 256},
    "mobilebert_test": {**_PRESETS["mobilebert"], **_SMALL},
    "mobilebert_tiny_test": {**_PRESETS["mobilebert_tiny"], **_SMALL},
    "mobilebert_no_opt_test": {**_PRESETS["mobilebert_no_opt"], **_SMALL},
    "bert_test": {**_PRESETS["bert_base"], **_SMALL, "embedding_size": 64, "intra_bottleneck_size": 128,
                  "intermediate_size": 128},
})
PRESET_NAMES = tuple(_PRESETS)
PAPER_PRESETS = ("ib_bert_large", "mobilebert", "mobilebert_tiny", "mobilebert_no_opt", "bert_base")


def get_preset(name: str, **overrides: Any) -> MobileBertConfig:
    """A named configuration; `overrides` replace individual fields."""
    if name not in _PRESETS:
        raise ConfigError(f"unknown model preset {name!r}; choose one of {list(PRESET_NAMES)}")
    fields = {f.name for f in dataclasses.fields(MobileBertConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ConfigError(f"unknown MobileBertConfig field(s) {unknown} in overrides of preset {name!r}")
    return MobileBertConfig(**{**_PRESETS[name], **overrides})

