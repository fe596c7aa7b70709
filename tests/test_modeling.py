"""Model configuration, parameter counts, FLOPs, dtype and options of the Flax models."""

from __future__ import annotations

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mobilebert_jax import flops
from mobilebert_jax.errors import ConfigError
from mobilebert_jax.config import MobileBertConfig, get_preset
from mobilebert_jax.modeling import MobileBertForPreTraining, MobileBertModel


def test_parameter_counts_match_reference():
    assert flops.parameter_count(get_preset("mobilebert")) == 24_581_888
    model = MobileBertForPreTraining(get_preset("mobilebert", classifier_activation=True))  # HF's default
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 2), jnp.int32)))
    assert sum(x.size for x in jax.tree.leaves(nn.unbox(shapes["params"]))) == 36_860_220
    assert abs(flops.parameter_count(get_preset("mobilebert_tiny")) - 15.5e6) < 0.1e6
    assert abs(flops.parameter_count(get_preset("ib_bert_large")) - 294e6) < 1e6
    # BERT-base with its pooler: the well-known 109,482,240.
    assert flops.parameter_count(get_preset("bert_base", classifier_activation=True), with_pooler=True) == 109_482_240


def test_flops_match_xla_cost_analysis():
    """The analytic count equals XLA's count of the compiled forward up to elementwise work."""
    for name in ("mobilebert_test", "ib_bert_test", "mobilebert_tiny_test", "bert_test"):
        c = get_preset(name)
        model = MobileBertModel(c, add_pooling_layer=False)
        seq = 32
        ids = jnp.zeros((2, seq), jnp.int32)
        params = jax.eval_shape(lambda: model.init(jax.random.key(0), ids))["params"]
        compiled = jax.jit(lambda p, x: model.apply({"params": p}, x)).lower(params, ids).compile()
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        analytic = 2 * seq * flops.encoder_flops_per_token(c, seq)
        assert analytic <= cost["flops"] <= 1.25 * analytic, name


def test_paper_flops_order_of_magnitude():
    # The paper quotes 5.7 GFLOPs for MobileBERT at sequence length 128.
    per_sequence = 128 * flops.encoder_flops_per_token(get_preset("mobilebert"), 128)
    assert 5.0e9 < per_sequence < 6.0e9


@pytest.mark.parametrize("field,value,message", [
    ("num_attention_heads", 5, "does not divide intra_bottleneck_size=128"),
    ("hidden_act", "gelu2", "unknown activation"),
    ("normalization_type", "batch_norm", "unknown normalization"),
    ("hidden_size", -512, "must be positive"),
    ("hidden_dropout_prob", 1.5, "probability"),
    ("attention_mask_mode", "multiply", "choose one of"),
    ("embedding_size", 1024, "must not exceed hidden_size"),
    ("trigram_input", "yes", "true or false"),
])
def test_bad_config_names_the_field(field, value, message):
    with pytest.raises(ConfigError, match=f"MobileBertConfig.{field}=.*{message}"):
        get_preset("mobilebert", **{field: value})


def test_unknown_preset_and_field():
    with pytest.raises(ConfigError, match="unknown model preset 'mobilebert_huge'"):
        get_preset("mobilebert_huge")
    with pytest.raises(ConfigError, match="hiden_size"):
        get_preset("mobilebert", hiden_size=3)


def test_hf_config_json_roundtrip(tmp_path):
    c = get_preset("mobilebert_tiny", attention_mask_mode="additive", dtype="bfloat16")
    (tmp_path / "config.json").write_text(json.dumps(c.to_hf_dict()))  # what convert/native.py writes
    assert MobileBertConfig.from_hf_json(str(tmp_path / "config.json")) == c


def test_hf_config_without_our_section_gets_hf_semantics(tmp_path):
    path = tmp_path / "config.json"
    path.write_text('{"model_type": "mobilebert", "hidden_act": "relu", "num_hidden_layers": 3}')
    c = MobileBertConfig.from_hf_json(str(path))
    assert c.num_hidden_layers == 3 and c.classifier_activation  # HF's default pooler
    assert c.attention_mask_mode == "additive" and c.embedding_and_output_norm_eps == 1e-5


@pytest.mark.parametrize("text,message", [
    ('{"model_type": "bert"}', "model_type is 'bert'"),
    ('{"num_attention_heads": 3}', "num_attention_heads=3"),
    ('{"hidden_size": 512,\n "oops"}', "line 2"),
])
def test_bad_config_json(tmp_path, text, message):
    path = tmp_path / "config.json"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as e:
        MobileBertConfig.from_hf_json(str(path))
    assert str(path) in str(e.value)


def _init(config, ids):
    model = MobileBertForPreTraining(config)
    return model, model.init(jax.random.key(0), ids)["params"]


def test_every_parameter_has_logical_axes():
    c = get_preset("mobilebert_test")
    boxed = jax.eval_shape(lambda: MobileBertForPreTraining(c).init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32)))
    leaves = jax.tree.leaves(boxed["params"], is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
    assert leaves and all(isinstance(x, nn.LogicallyPartitioned) for x in leaves)
    for leaf in leaves:
        assert len(leaf.names) == leaf.value.ndim


def test_bfloat16_compute_keeps_float32_params_and_tracks_float32():
    c = get_preset("mobilebert_test")
    ids = jnp.asarray(np.random.default_rng(0).integers(1, c.vocab_size, (2, 16)))
    model, params = _init(c, ids)
    params = nn.unbox(params)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
    f32 = model.apply({"params": params}, ids)["mlm_logits"]
    bf16 = MobileBertForPreTraining(c.replace(dtype="bfloat16")).apply({"params": params}, ids)
    assert bf16["last_hidden_state"].dtype == jnp.bfloat16
    assert bf16["mlm_logits"].dtype == jnp.float32
    assert float(jnp.max(jnp.abs(bf16["mlm_logits"] - f32))) < 0.05 * float(jnp.max(jnp.abs(f32))) + 0.05


def test_remat_gives_the_same_gradients():
    c = get_preset("mobilebert_test")
    ids = jnp.ones((2, 8), jnp.int32)
    model, params = _init(c, ids)
    params = nn.unbox(params)

    def loss(p, m):
        return jnp.mean(m.apply({"params": p}, ids)["mlm_logits"] ** 2)

    g1 = jax.grad(loss)(params, model)
    g2 = jax.grad(loss)(params, MobileBertForPreTraining(c.replace(remat=True)))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), g1, g2)


@pytest.mark.parametrize("preset", ["mobilebert_test", "ib_bert_test", "mobilebert_tiny_test", "bert_test"])
def test_explicit_weight_gradients_give_the_same_gradients(preset):
    """The custom kernel-gradient form (primitives.py) is a layout change: same loss, same gradients, under jit."""
    c = get_preset(preset)
    ids = jax.random.randint(jax.random.key(1), (2, 8), 1, c.vocab_size)
    model, params = _init(c, ids)
    params = nn.unbox(params)

    def loss(p, m):
        out = m.apply({"params": p}, ids)
        return jnp.mean(out["mlm_logits"] ** 2) + jnp.mean(out["nsp_logits"] ** 2)

    explicit = MobileBertForPreTraining(c.replace(explicit_weight_gradients=True))
    l1, g1 = jax.jit(jax.value_and_grad(loss), static_argnums=1)(params, model)
    l2, g2 = jax.jit(jax.value_and_grad(loss), static_argnums=1)(params, explicit)
    np.testing.assert_allclose(l1, l2, rtol=1e-6)
    # atol relative to each gradient's size (bert_test's MLM head has a zero-size extra_output_weights).
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6 * float(np.abs(a).max(initial=0))),
                 g1, g2)


def test_dropout_only_when_not_deterministic():
    c = get_preset("ib_bert_test")  # hidden dropout 0.1
    ids = jnp.ones((2, 8), jnp.int32)
    model, params = _init(c, ids)
    a = model.apply({"params": params}, ids, deterministic=True)["mlm_logits"]
    b = model.apply({"params": params}, ids, deterministic=True)["mlm_logits"]
    c1 = model.apply({"params": params}, ids, deterministic=False, rngs={"dropout": jax.random.key(1)})["mlm_logits"]
    c2 = model.apply({"params": params}, ids, deterministic=False, rngs={"dropout": jax.random.key(1)})["mlm_logits"]
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(c1, c2)
    assert not np.allclose(a, c1)


def test_trigram_respects_padding_makes_padding_invisible():
    """REFERENCE section 7: padding leaks into the last real token; the option stops it."""
    base = get_preset("mobilebert_test")
    ids = jnp.asarray([[5, 6, 7, 8, 0, 0]])
    mask = jnp.asarray([[1, 1, 1, 1, 0, 0]])
    for respects, leaks in ((False, True), (True, False)):
        c = base.replace(trigram_respects_padding=respects)
        model = MobileBertModel(c, add_pooling_layer=False)
        params = model.init(jax.random.key(0), ids)["params"]
        # Give the pad row a distinctive value so a leak is visible.
        table = params["embeddings"]["word_embeddings"]["embedding"]
        params["embeddings"]["word_embeddings"]["embedding"] = nn.LogicallyPartitioned(
            table.value.at[0].set(3.0), table.names)
        padded = model.apply({"params": params}, ids, attention_mask=mask)["last_hidden_state"][:, :4]
        unpadded = model.apply({"params": params}, ids[:, :4], attention_mask=mask[:, :4])["last_hidden_state"]
        assert (not np.allclose(padded, unpadded, atol=1e-6)) == leaks


def test_sequence_longer_than_positions_is_an_error():
    c = get_preset("mobilebert_test")
    with pytest.raises(ValueError, match="exceeds max_position_embeddings=64"):
        MobileBertModel(c).init(jax.random.key(0), jnp.zeros((1, 65), jnp.int32))
