"""Each distillation loss against an independent NumPy computation, padding masks included."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mobilebert_jax.distill import losses
from mobilebert_jax.modeling.attention import mask_scores

B, T, H, N, P, V = 2, 7, 16, 4, 3, 11


def _mask(include_padding: bool) -> np.ndarray:
    m = np.ones((B, T), np.float32)
    m[0, 5:] = 0  # two padded positions in the first row
    m[1, 3:] = 0
    return np.ones_like(m) if include_padding else m


def _features(seed: int, scale: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # Unnormalized features with a per-token offset and spread, like NoNorm activations.
    return (rng.normal(size=(B, T, H)) * scale + rng.normal(size=(B, T, 1)) * 3).astype(np.float32)


def _np_ln(x):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + 1e-12)


@pytest.mark.parametrize("include_padding", [False, True])
def test_feature_map_transfer(include_padding):
    hs, ht, w = _features(0, 2.0), _features(1, 5.0), _mask(include_padding)
    expected = 0.0
    for b in range(B):
        for t in range(T):
            if w[b, t]:
                expected += np.mean((_np_ln(ht[b, t].astype(np.float64)) - _np_ln(hs[b, t].astype(np.float64))) ** 2)
    expected /= w.sum()
    got = losses.feature_map_sum(jnp.asarray(hs), jnp.asarray(ht), jnp.asarray(w)) / w.sum()
    np.testing.assert_allclose(got, expected, rtol=1e-5)


@pytest.mark.parametrize("include_padding", [False, True])
def test_mean_and_variance_transfer_layer_to_layer(include_padding):
    hs, ht, w = _features(2, 1.0), _features(3, 4.0), _mask(include_padding)
    mean_sq, var_abs = 0.0, 0.0
    for b in range(B):
        for t in range(T):
            if w[b, t]:
                s, te = hs[b, t].astype(np.float64), ht[b, t].astype(np.float64)
                mean_sq += (te.mean() - s.mean()) ** 2
                var_abs += abs(te.var() - s.var())
    mean_sum, var_sum = losses.mean_variance_sums(jnp.asarray(hs), jnp.asarray(ht), jnp.asarray(w))
    np.testing.assert_allclose(mean_sum / w.sum(), mean_sq / w.sum(), rtol=1e-5)
    np.testing.assert_allclose(var_sum / w.sum(), var_abs / w.sum(), rtol=1e-5)


@pytest.mark.parametrize("offset", [1e5, 1e6, 1e7])
def test_statistics_stay_accurate_at_large_offsets(offset):
    """Features like offset + N(0, 1) (NoNorm activations reach 2.5e7): every statistic-based loss matches
    float64 NumPy on the same float32 inputs within 1e-5 relative (two float32 passes were off by 1e-1 at 1e7)."""
    rng = np.random.default_rng(9)
    w = _mask(False)
    for trial in range(3):
        shape = (B, T, 128)
        ht = (offset + rng.normal(size=shape)).astype(np.float32)
        # The student's own offset and spread: the mean term sees a small difference of two large means.
        hs = (offset * (1 + 1e-6 * trial) + rng.normal(size=(B, T, 1)) + 1.5 * rng.normal(size=shape)).astype(
            np.float32)
        s64, t64 = hs.astype(np.float64), ht.astype(np.float64)
        mean_sq = np.sum((t64.mean(-1) - s64.mean(-1)) ** 2 * w)
        var_abs = np.sum(np.abs(t64.var(-1) - s64.var(-1)) * w)
        fmt = np.sum(np.mean((_np_ln(t64) - _np_ln(s64)) ** 2, axis=-1) * w)
        mean_sum, var_sum = losses.mean_variance_sums(jnp.asarray(hs), jnp.asarray(ht), jnp.asarray(w))
        np.testing.assert_allclose(mean_sum, mean_sq, rtol=1e-5, err_msg=f"mean, offset {offset}")
        np.testing.assert_allclose(var_sum, var_abs, rtol=1e-5, err_msg=f"variance, offset {offset}")
        got_fmt = losses.feature_map_sum(jnp.asarray(hs), jnp.asarray(ht), jnp.asarray(w))
        np.testing.assert_allclose(got_fmt, fmt, rtol=1e-5, err_msg=f"feature map, offset {offset}")
        # The normalized features themselves, token by token.
        np.testing.assert_allclose(losses.parameter_free_layer_norm(jnp.asarray(hs)), _np_ln(s64), rtol=1e-5,
                                   atol=1e-5)


def test_statistics_gradients_ignore_the_shift():
    """The shift is held constant, which leaves the gradients those of the plain formulas."""
    hs, ht, w = _features(10, 2.0), _features(11, 3.0), jnp.asarray(_mask(False))

    def plain(x):
        mu, mu_t = x.mean(-1), jnp.asarray(ht).mean(-1)
        var, var_t = x.var(-1), jnp.asarray(ht).var(-1)
        return jnp.sum((mu_t - mu) ** 2 * w) + jnp.sum(jnp.abs(var_t - var) * w)

    shifted = lambda x: sum(losses.mean_variance_sums(x, jnp.asarray(ht), w))  # noqa: E731
    np.testing.assert_allclose(jax.grad(shifted)(jnp.asarray(hs)), jax.grad(plain)(jnp.asarray(hs)), rtol=1e-4,
                               atol=1e-6)


def _np_log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


@pytest.mark.parametrize("include_padding", [False, True])
def test_attention_transfer_tf1_replacement_mask(include_padding):
    """TF1 masks keys by replacing their scores with -6: padded keys keep some probability."""
    rng = np.random.default_rng(4)
    raw_s, raw_t = rng.normal(size=(2, B, N, T, T)) * 2
    key_mask = _mask(False)
    m = key_mask[:, None, None, :]
    ss, st = raw_s * m + (1 - m) * -6.0, raw_t * m + (1 - m) * -6.0
    w = _mask(include_padding)
    total, total_ce = 0.0, 0.0
    for b in range(B):
        for q in range(T):
            if not w[b, q]:
                continue
            kl_heads, ce_heads = [], []
            for h in range(N):
                lt, ls = _np_log_softmax(st[b, h, q]), _np_log_softmax(ss[b, h, q])
                kl_heads.append(np.sum(np.exp(lt) * (lt - ls)))
                ce_heads.append(-np.sum(np.exp(lt) * ls))  # TF1's attention loss
            total += np.mean(kl_heads)
            total_ce += np.mean(ce_heads)
    # The model's own masking gives the same s' as the NumPy replacement above.
    s_model = mask_scores(jnp.asarray(raw_s, jnp.float32), jnp.asarray(key_mask), "replace")
    t_model = mask_scores(jnp.asarray(raw_t, jnp.float32), jnp.asarray(key_mask), "replace")
    np.testing.assert_allclose(s_model, ss, rtol=1e-6, atol=1e-6)
    got, got_ce = losses.attention_sums(s_model, t_model, jnp.asarray(w))
    np.testing.assert_allclose(got / w.sum(), total / w.sum(), rtol=1e-5)
    np.testing.assert_allclose(got_ce / w.sum(), total_ce / w.sum(), rtol=1e-5)
    assert total_ce > total + 1.0  # the teacher's entropy, which the KL leaves out


def test_attention_transfer_additive_mask_ignores_padded_keys():
    """With HF's additive mask, padded keys have probability 0 in both maps and add nothing (no NaN)."""
    rng = np.random.default_rng(5)
    raw_s, raw_t = rng.normal(size=(2, B, N, T, T)) * 2
    key_mask = _mask(False)
    w = key_mask
    total, total_ce = 0.0, 0.0
    for b in range(B):
        keys = key_mask[b] > 0
        for q in range(T):
            if w[b, q]:
                kls, ces = [], []
                for h in range(N):
                    lt, ls = _np_log_softmax(raw_t[b, h, q, keys]), _np_log_softmax(raw_s[b, h, q, keys])
                    kls.append(np.sum(np.exp(lt) * (lt - ls)))
                    ces.append(-np.sum(np.exp(lt) * ls))
                total += np.mean(kls)
                total_ce += np.mean(ces)
    s = mask_scores(jnp.asarray(raw_s, jnp.float32), jnp.asarray(key_mask), "additive")
    t = mask_scores(jnp.asarray(raw_t, jnp.float32), jnp.asarray(key_mask), "additive")
    got, got_ce = losses.attention_sums(s, t, jnp.asarray(w))
    np.testing.assert_allclose(got / w.sum(), total / w.sum(), rtol=1e-5)
    np.testing.assert_allclose(got_ce / w.sum(), total_ce / w.sum(), rtol=1e-5)
    for which in (0, 1):  # KL and cross-entropy: the same gradient, finite
        grad = jax.grad(lambda x: losses.attention_sums(x, t, jnp.asarray(w))[which])(s)
        assert np.isfinite(np.asarray(grad)).all()
        if which == 0:
            kl_grad = grad
    np.testing.assert_allclose(grad, kl_grad, atol=1e-6)


def test_attention_transfer_is_zero_for_identical_maps_and_teacher_gets_no_gradient():
    rng = np.random.default_rng(6)
    s = jnp.asarray(rng.normal(size=(B, N, T, T)), jnp.float32)
    w = jnp.asarray(_mask(False))
    kl, ce = losses.attention_sums(s, s, w)
    np.testing.assert_allclose(kl, 0.0, atol=1e-6)
    assert ce > 1.0  # identical maps: the cross-entropy is the entropy, not 0
    for which in (0, 1):
        g_teacher = jax.grad(lambda t: losses.attention_sums(s * 2, t, w)[which])(s)
        assert not np.asarray(g_teacher).any()


@pytest.mark.parametrize("alpha,temperature", [(0.5, 1.0), (0.3, 2.0), (1.0, 1.0), (0.0, 0.5)])
def test_pretraining_distillation_mlm(alpha, temperature):
    rng = np.random.default_rng(7)
    zs, zt = rng.normal(size=(2, B, P, V)) * 3
    ids = rng.integers(0, V, (B, P))
    weights = np.array([[1, 1, 0], [1, 0, 0]], np.float32)  # unused prediction slots have weight 0
    expected = 0.0
    for b in range(B):
        for p in range(P):
            q = np.exp(_np_log_softmax(zt[b, p] / temperature))
            y = alpha * np.eye(V)[ids[b, p]] + (1 - alpha) * q
            expected += weights[b, p] * -np.sum(y * _np_log_softmax(zs[b, p]))
    got = losses.distillation_mlm_sum(jnp.asarray(zs, jnp.float32), jnp.asarray(zt, jnp.float32), jnp.asarray(ids),
                                      jnp.asarray(weights), alpha, temperature)
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_hard_labels_only_need_no_teacher():
    rng = np.random.default_rng(8)
    zs = jnp.asarray(rng.normal(size=(B, P, V)), jnp.float32)
    ids, weights = jnp.asarray(rng.integers(0, V, (B, P))), jnp.ones((B, P))
    hard = losses.distillation_mlm_sum(zs, None, ids, weights, 1.0, 1.0)
    np.testing.assert_allclose(hard, losses.distillation_mlm_sum(zs, zs * 5, ids, weights, 1.0, 1.0), rtol=1e-6)
    with pytest.raises(ValueError, match="needs the teacher's logits"):
        losses.distillation_mlm_sum(zs, None, ids, weights, 0.5, 1.0)
