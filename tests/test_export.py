"""ONNX export: onnxruntime's outputs match JAX's for every model family; int8 graphs are int8 (skipped without
the `export` extra)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from mobilebert_jax import get_preset  # noqa: E402
from mobilebert_jax.export import export_model, model_function  # noqa: E402
from mobilebert_jax.export.onnx_export import UnsupportedPrimitive, export  # noqa: E402
from mobilebert_jax.modeling import MobileBertForQuestionAnswering, MobileBertForSequenceClassification  # noqa: E402
from mobilebert_jax.quantization import calibrate, quantize  # noqa: E402


def _inputs(config, batch=2, seq=16, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, config.vocab_size, (batch, seq)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1, seq - 5:] = 0  # padding: the TF1 "replace" mask and the trigram's pad leak must both survive
    ids[1, seq - 5:] = 0
    segments = (np.arange(seq)[None] >= seq // 2).astype(np.int32).repeat(batch, 0)
    return {"input_ids": ids, "input_mask": mask, "segment_ids": segments}


def _run_onnx(model_proto, inputs):
    session = ort.InferenceSession(model_proto.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, inputs)))


@pytest.mark.parametrize("preset,head", [("mobilebert_test", "classifier"), ("mobilebert_test", "qa"),
                                         ("mobilebert_tiny_test", "classifier"), ("ib_bert_test", "classifier"),
                                         ("bert_test", "qa")])
def test_onnx_outputs_match_jax(tmp_path, preset, head):
    config = get_preset(preset, hidden_act="gelu") if preset == "bert_test" else get_preset(preset)  # erf too
    model = MobileBertForSequenceClassification(config, num_labels=3) if head == "classifier" else \
        MobileBertForQuestionAnswering(config)
    inputs = _inputs(config)
    params = nn.unbox(model.init(jax.random.key(0), inputs["input_ids"])["params"])
    path = tmp_path / "model.onnx"
    proto = export_model(model, params, str(path), batch_size=2, seq_len=16)
    assert path.stat().st_size > 4 * sum(x.size for x in jax.tree.leaves(params)) * 0.9
    expected = jax.jit(model_function(model, params))(**inputs)
    got = _run_onnx(proto, inputs)
    assert set(got) == set(expected)
    for key, value in expected.items():
        value = np.asarray(value)
        np.testing.assert_allclose(got[key], value, rtol=1e-4, atol=1e-5 * max(1.0, np.abs(value).max()))


def test_int8_simulation_exports_too():
    config = get_preset("mobilebert_test")
    model = MobileBertForSequenceClassification(config, num_labels=2)
    inputs = _inputs(config, seed=1)
    params = nn.unbox(model.init(jax.random.key(1), inputs["input_ids"])["params"])
    calibration = [{k: v for k, v in _inputs(config, batch=8, seed=2).items()}]
    quantized = quantize(model, params, calibrate(model, params, calibration))
    proto = export_model(model, params, None, batch_size=2, seq_len=16, quantized=quantized, fmt="onnx")
    expected = np.asarray(jax.jit(model_function(model, params, quantized))(**inputs)["logits"])
    np.testing.assert_allclose(_run_onnx(proto, inputs)["logits"], expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("quantization", ["dynamic_int8", "full_int8"])
def test_int8_onnx_is_a_real_int8_graph(tmp_path, quantization):
    config = get_preset("mobilebert_test", initializer_range=0.05)  # logits well above int8 rounding
    model = MobileBertForQuestionAnswering(config)
    inputs = _inputs(config, seed=3)
    params = nn.unbox(model.init(jax.random.key(3), inputs["input_ids"])["params"])
    export_model(model, params, str(tmp_path / "float.onnx"), batch_size=2, seq_len=16)
    calibration = _inputs(config, batch=8, seed=4) if quantization == "full_int8" else None
    proto = export_model(model, params, str(tmp_path / "int8.onnx"), batch_size=2, seq_len=16,
                         quantization=quantization, calibration=calibration)
    assert (tmp_path / "int8.onnx").stat().st_size < 0.5 * (tmp_path / "float.onnx").stat().st_size
    ops = {node.op_type for node in proto.graph.node}
    assert ({"MatMulInteger", "DynamicQuantizeLinear"} if quantization == "dynamic_int8"
            else {"QuantizeLinear", "DequantizeLinear"}) <= ops
    int8_weights = [t for t in proto.graph.initializer if t.data_type == onnx.TensorProto.INT8 and t.dims]
    assert len(int8_weights) >= 10  # every MatMul kernel and the word-embedding table
    expected = jax.jit(model_function(model, params))(**inputs)
    got = _run_onnx(proto, inputs)
    for key, value in expected.items():
        value = np.asarray(value)
        assert np.corrcoef(got[key].ravel(), value.ravel())[0, 1] > 0.9, key


def test_unsupported_primitives_are_named():
    with pytest.raises(UnsupportedPrimitive, match="'sort'"):
        export(lambda x: {"y": jnp.sort(x)}, {"x": np.zeros(4, np.float32)})


def test_general_contractions_fall_back_to_einsum():
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(2, 3, 4)).astype(np.float32), rng.normal(size=(4, 3, 5)).astype(np.float32)
    proto = export(lambda x, y: {"z": jnp.einsum("abc,cbd->ad", x, y)}, {"x": x, "y": y})
    assert "Einsum" in {node.op_type for node in proto.graph.node}
    np.testing.assert_allclose(_run_onnx(proto, {"x": x, "y": y})["z"], np.einsum("abc,cbd->ad", x, y), rtol=1e-5)
