"""The IB-BERT teacher, which HF cannot hold, against a float64 NumPy reading of REFERENCE section 2.

The NumPy forward below is written from the reference's equations, not from
our Flax modules; it reads parameters by their HF-style names only.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mobilebert_jax import get_preset
from mobilebert_jax.modeling import MobileBertForPreTraining


def _randomize(params, seed):
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    out = []
    for key, path, leaf in zip(keys, paths, leaves):
        if "scale" in path:
            out.append(0.5 + jax.random.uniform(key, leaf.shape))
        elif "bias" in path:
            out.append(0.1 * jax.random.normal(key, leaf.shape))
        else:
            out.append(0.1 * jax.random.normal(key, leaf.shape))
    return jax.tree.unflatten(treedef, out)


def _np(tree):
    return jax.tree.map(lambda x: np.asarray(x, np.float64), tree)


def _gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))


def _ln(x, p, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * p["scale"] + p["bias"]


def _lin(x, p):
    return x @ p["kernel"] + p["bias"]


def numpy_teacher(c, p, ids, mask, types, mode):
    """Embeddings, then per layer: b = LN(x W_in); Q, K, V from x (512 -> 1024);
    h = LN(ctx W_o + b); one FFN; output bottleneck 1024 -> 512, + x, LN."""
    emb = p["mobilebert"]["embeddings"]
    e = emb["word_embeddings"]["embedding"][ids]
    zero = np.zeros_like(e[:, :1])
    t = np.concatenate([np.concatenate([e[:, 1:], zero], 1), e, np.concatenate([zero, e[:, :-1]], 1)], -1)
    x = _lin(t, emb["embedding_transformation"])
    x = x + emb["position_embeddings"]["embedding"][np.arange(ids.shape[1])][None]
    x = x + emb["token_type_embeddings"]["embedding"][types]
    x = _ln(x, emb["LayerNorm"], c.layer_norm_eps)
    hidden, scores_all = [x], []
    heads, d = c.num_attention_heads, c.intra_bottleneck_size // c.num_attention_heads
    m = mask[:, None, None, :].astype(np.float64)
    for i in range(c.num_hidden_layers):
        lp = p["mobilebert"]["encoder"][f"layer_{i}"]
        b = _ln(_lin(x, lp["bottleneck"]["input"]["dense"]), lp["bottleneck"]["input"]["LayerNorm"], c.layer_norm_eps)
        att = lp["attention"]["self"]
        split = lambda y: y.reshape(*y.shape[:2], heads, d).transpose(0, 2, 1, 3)  # noqa: E731
        q, k, v = (split(_lin(x, att[n])) for n in ("query", "key", "value"))
        s = q @ k.transpose(0, 1, 3, 2) / math.sqrt(d)
        s = s * m + (1 - m) * (-6.0) if mode == "replace" else s + (1 - m) * -1e30
        probs = np.exp(s - s.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        ctx = (probs @ v).transpose(0, 2, 1, 3).reshape(*x.shape[:2], -1)
        h = _ln(_lin(ctx, lp["attention"]["output"]["dense"]) + b, lp["attention"]["output"]["LayerNorm"],
                c.layer_norm_eps)
        inner = _gelu_tanh(_lin(h, lp["intermediate"]["dense"]))
        o = _ln(_lin(inner, lp["output"]["dense"]) + h, lp["output"]["LayerNorm"], c.layer_norm_eps)
        x = _ln(_lin(o, lp["output"]["bottleneck"]["dense"]) + x, lp["output"]["bottleneck"]["LayerNorm"],
                c.layer_norm_eps)
        hidden.append(x)
        scores_all.append(s)
    return hidden, scores_all


@pytest.mark.parametrize("mode", ["replace", "additive"])
def test_teacher_matches_numpy(mode):
    c = get_preset("ib_bert_test", attention_mask_mode=mode)
    assert c.intra_bottleneck_size > c.hidden_size and not c.key_query_shared_bottleneck
    rng = np.random.default_rng(0)
    ids = rng.integers(1, c.vocab_size, (3, 10))
    mask = np.ones_like(ids)
    mask[1, -3:] = 0
    mask[2, -6:] = 0
    ids[mask == 0] = 0
    types = np.zeros_like(ids)
    types[:, 5:] = 1
    model = MobileBertForPreTraining(c)
    params = _randomize(nn.unbox(model.init(jax.random.key(0), jnp.asarray(ids))["params"]), seed=3)
    ours = model.apply({"params": params}, ids, attention_mask=mask, token_type_ids=types,
                       output_hidden_states=True, output_attention_scores=True)
    hidden, scores = numpy_teacher(c, _np(params), ids, mask, types, mode)
    # The Q/K/V kernels really take the 512-d block input into 1024-d projections.
    assert params["mobilebert"]["encoder"]["layer_0"]["attention"]["self"]["query"]["kernel"].shape == (
        c.hidden_size, c.intra_bottleneck_size)
    for i, (a, b) in enumerate(zip(hidden, ours["hidden_states"])):
        np.testing.assert_allclose(np.asarray(b), a, atol=2e-5, rtol=1e-5, err_msg=f"hidden state {i}")
    for i, (a, b) in enumerate(zip(scores, ours["attention_scores"])):
        b = np.asarray(b, np.float64)
        keep = np.broadcast_to(mask[:, None, None, :] > 0, a.shape)
        np.testing.assert_allclose(b[keep], a[keep], atol=2e-5, rtol=1e-5, err_msg=f"scores of layer {i}")
        if mode == "replace":  # TF1 replaces masked scores by exactly -6
            assert np.all(b[~keep] == -6.0)


@pytest.mark.parametrize("pooler", [True, False], ids=["tf1_tanh_pooler", "tf2_no_pooler"])
def test_teacher_nsp_head_reads_the_pooler_tf1_or_tf2_chooses(pooler):
    """TF1 (the ib_bert_large preset): NSP logits = (tanh(h[CLS] W_p + b_p)) W + b; the TF2 Model Garden's yaml
    (classifier_activation=False): h[CLS] W + b, no pooler parameters."""
    assert get_preset("ib_bert_large").classifier_activation and get_preset("ib_bert_test").classifier_activation
    c = get_preset("ib_bert_test", classifier_activation=pooler)
    ids = np.random.default_rng(1).integers(1, c.vocab_size, (2, 6))
    model = MobileBertForPreTraining(c)
    params = _randomize(nn.unbox(model.init(jax.random.key(0), jnp.asarray(ids))["params"]), seed=4)
    assert ("pooler" in params["mobilebert"]) == pooler
    ours = model.apply({"params": params}, ids)
    p = _np(params)
    hidden, _ = numpy_teacher(c, p, ids, np.ones_like(ids), np.zeros_like(ids), "replace")
    first = hidden[-1][:, 0]
    pooled = np.tanh(_lin(first, p["mobilebert"]["pooler"]["dense"])) if pooler else first
    np.testing.assert_allclose(np.asarray(ours["nsp_logits"]), _lin(pooled, p["cls"]["seq_relationship"]),
                               atol=2e-5, rtol=1e-5)
