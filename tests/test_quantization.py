"""Post-training int8: number formats, calibration, the fake-quant forward pass against float, sizes."""

from __future__ import annotations

import flax.linen as nn
import jax
import numpy as np
import pytest
from flax import traverse_util

from mobilebert_jax import get_preset
from mobilebert_jax.modeling import MobileBertForQuestionAnswering, MobileBertForSequenceClassification
from mobilebert_jax.quantization import PTQConfig, apply_quantized, calibrate, float_size_bytes, int8, quantize
from mobilebert_jax.quantization.ptq import kernel_input_axes

CONFIG = get_preset("mobilebert_test")


def _batches(count=2, n=8, t=16, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        mask = (np.arange(t)[None] < rng.integers(8, t + 1, (n, 1))).astype(np.int32)
        out.append({"input_ids": (rng.integers(5, CONFIG.vocab_size, (n, t)) * mask).astype(np.int32),
                    "input_mask": mask, "segment_ids": (np.arange(t)[None] >= 6).astype(np.int32).repeat(n, 0)})
    return out


def _forward(model, params, batch, qmodel=None):
    kwargs = dict(attention_mask=batch["input_mask"], token_type_ids=batch["segment_ids"], deterministic=True)
    if qmodel is None:
        return model.apply({"params": params}, batch["input_ids"], **kwargs)
    return apply_quantized(model, qmodel, batch["input_ids"], **kwargs)


def _with_outlier_channels(model, params):
    """Like the released MobileBERT: two residual-stream channels 1e4 times larger than the rest (NoNorm
    scale), which the layers reading the stream weigh down, so the output still depends on every channel."""
    flat = {k: np.array(v) for k, v in traverse_util.flatten_dict(params, sep="/").items()}
    flat["mobilebert/embeddings/LayerNorm/scale"][:2] *= 1e4
    for path, axis in kernel_input_axes(model, np.zeros((1, 8), np.int32)).items():
        if axis == "hidden":
            flat[f"{path}/kernel"][:2] *= 1e-4
    flat["classifier/kernel"] *= 300  # logits of order 1, so relative errors are meaningful
    return traverse_util.unflatten_dict(flat, sep="/")


@pytest.fixture(scope="module")
def classifier():
    model = MobileBertForSequenceClassification(CONFIG, num_labels=3)
    params = nn.unbox(model.init(jax.random.key(0), _batches()[0]["input_ids"])["params"])
    return model, _with_outlier_channels(model, params)


def test_weight_format():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(16, 5)).astype(np.float32)
    w[:, 3] = 0.0
    q, scale = int8.quantize_weight(w)
    assert q.dtype == np.int8 and scale.shape == (5,) and np.abs(q).max() == 127
    back = int8.dequantize_weight(q, scale)
    assert np.all(np.abs(back - w) <= scale / 2 + 1e-7) and np.all(back[:, 3] == 0)
    np.testing.assert_allclose(np.abs(back).max(axis=0)[[0, 1, 2, 4]], np.abs(w).max(axis=0)[[0, 1, 2, 4]],
                               rtol=1e-6)
    rows_q, rows_scale = int8.quantize_weight(w, axis=0)
    assert rows_scale.shape == (16,)
    np.testing.assert_allclose(int8.dequantize_weight(rows_q, rows_scale, axis=0), w, atol=rows_scale.max())


def test_activation_format_keeps_zero_exact():
    scale, zero_point = int8.activation_qparams(np.array([-1.0, 0.5, -3.0]), np.array([3.0, 2.0, -1.0]))
    x = np.array([[0.0, 0.0, 0.0], [-1.0, 2.0, -3.0], [10.0, -5.0, 1.0]], np.float32)
    y = np.asarray(int8.fake_quant(x, scale, zero_point))
    assert np.all(y[0] == 0.0)  # ranges are widened to contain 0, which lands on the grid
    np.testing.assert_allclose(y[1], x[1], atol=scale.max() / 2 + 1e-6)
    np.testing.assert_allclose(y[2], [3.0, 0.0, 0.0], atol=scale.max())  # clipped to the calibrated range


def test_calibration_is_deterministic_and_covers_every_dense(classifier):
    model, params = classifier
    batches = _batches()
    first, second = calibrate(model, params, batches), calibrate(model, params, batches)
    assert set(first) == set(kernel_input_axes(model, batches[0]["input_ids"]))
    for path in first:
        np.testing.assert_array_equal(first[path].channel_lo, second[path].channel_lo)
        assert first[path].tensor_hi == second[path].tensor_hi
    stream = first["mobilebert/encoder/layer_0/bottleneck/input/dense"]
    assert stream.tensor_hi > 100 > 1 > np.abs(stream.channel_hi[2:]).max()  # the outliers are where we put them
    clipped = calibrate(model, params, batches, method="percentile", percentile=99.0)
    for path, r in clipped.items():
        assert first[path].tensor_lo <= r.tensor_lo <= r.tensor_hi <= first[path].tensor_hi
    with pytest.raises(ValueError, match="calibration method 'kl'"):
        calibrate(model, params, batches, method="kl")


def test_int8_logits_stay_close_where_one_scale_per_tensor_fails(classifier):
    model, params = classifier
    calib, test = _batches(seed=1), _batches(count=1, seed=2)[0]
    ranges = calibrate(model, params, calib)
    reference = np.asarray(_forward(model, params, test)["logits"])
    assert np.abs(reference).max() > 0.5

    def relative_error(config):
        out = _forward(model, params, test, quantize(model, params, ranges, config))["logits"]
        return float(np.abs(np.asarray(out) - reference).max() / np.abs(reference).max())

    chosen, naive = relative_error(PTQConfig()), relative_error(PTQConfig(per_channel_input_axes=()))
    assert chosen < 0.1
    assert naive > 0.5  # the outlier channels' scale rounds every ordinary channel to zero
    assert relative_error(PTQConfig(activations=False)) < 0.3


class _OneDense(nn.Module):
    """A Dense layer reading a residual stream, called like the models."""

    @nn.compact
    def __call__(self, x, attention_mask=None, token_type_ids=None, deterministic=True):
        init = nn.with_logical_partitioning(nn.initializers.normal(1.0), ("hidden", "out"))
        return nn.Dense(6, kernel_init=init, bias_init=nn.initializers.normal(1.0), name="dense")(x)


def test_folded_per_channel_scales_are_integer_arithmetic():
    """The simulation equals sum_k (q_k - z_k) Q(s_k W_kj) * scale_j + b computed in integers."""
    model = _OneDense()
    rng = np.random.default_rng(3)
    x = (rng.normal(size=(20, 5)) * np.array([1, 100, 0.01, 3, 1e4])).astype(np.float32)
    params = nn.unbox(model.init(jax.random.key(0), x)["params"])
    batch = {"input_ids": x, "input_mask": None, "segment_ids": None}
    qmodel = quantize(model, params, calibrate(model, params, [batch]), example_input_ids=x)
    got = np.asarray(_forward(model, params, batch, qmodel))
    dense = qmodel.dense["dense"]
    assert dense.per_channel_input and dense.input_scale.shape == (5,)
    q_x = np.clip(np.round(x / dense.input_scale) + dense.input_zero_point, -128, 127)
    acc = (q_x - dense.input_zero_point).astype(np.int64) @ dense.kernel_q.astype(np.int64)
    np.testing.assert_allclose(got, acc * dense.kernel_scale + params["dense"]["bias"], rtol=1e-5, atol=1e-4)
    reference = np.asarray(_forward(model, params, batch))
    assert np.abs(got - reference).max() < 0.01 * np.abs(reference).max()


def test_sizes_and_the_qa_head():
    model = MobileBertForQuestionAnswering(CONFIG)
    batches = _batches()
    params = nn.unbox(model.init(jax.random.key(0), batches[0]["input_ids"])["params"])
    qmodel = quantize(model, params, calibrate(model, params, batches))
    float_kernels, int8_kernels = qmodel.kernel_bytes()
    assert 3.5 < float_kernels / int8_kernels <= 4.0
    assert qmodel.size_bytes() < 0.4 * float_size_bytes(params)
    assert qmodel.embeddings["mobilebert/embeddings/word_embeddings/embedding"][0].dtype == np.int8
    float_out, int8_out = _forward(model, params, batches[0]), _forward(model, params, batches[0], qmodel)
    for key in ("start_logits", "end_logits"):
        scale = np.abs(np.asarray(float_out[key])).max()
        assert np.abs(np.asarray(int8_out[key]) - np.asarray(float_out[key])).max() < 0.05 * scale
    with pytest.raises(ValueError, match="needs calibrated ranges"):
        quantize(model, params, None)


def test_glue_comparison_reports_both_models_on_the_same_dev_set():
    from mobilebert_jax.finetune import glue
    from mobilebert_jax.finetune.evaluate import calibration_rows, glue_scored
    from mobilebert_jax.quantization.compare import compare

    task = glue.get_task("mrpc")
    model = MobileBertForSequenceClassification(CONFIG, num_labels=2)
    batches = _batches(count=3, seed=4)
    arrays = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
    arrays["label"] = np.random.default_rng(0).integers(0, 2, len(arrays["input_ids"])).astype(np.int32)
    params = nn.unbox(model.init(jax.random.key(1), arrays["input_ids"][:1])["params"])
    rows = calibration_rows(len(arrays["label"]), 16)
    assert np.array_equal(rows, calibration_rows(len(arrays["label"]), 16)) and len(set(rows)) == 16
    report = compare(model, params, glue_scored(task, arrays, "MRPC dev"), {k: v[rows] for k, v in arrays.items()},
                     batch_size=8)
    assert set(report["float"]) == set(report["int8"]) == {"f1", "accuracy", "combined"}
    assert report["difference"]["accuracy"] == pytest.approx(report["int8"]["accuracy"] - report["float"]["accuracy"])
    assert report["held_out_examples"] == 24 and report["calibration_examples"] == 16
    assert 0.0 <= report["prediction_agreement"] <= 1.0 and report["size_ratio"] > 2.5
