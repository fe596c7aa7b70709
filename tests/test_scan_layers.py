"""Layers under nn.scan (`MobileBertConfig.scan_layers`): the scanned model computes what the unrolled one does.

Scanned == unrolled for every family's forward pass, hidden states, attention scores and gradients (with
and without remat), with the unrolled parameters stacked onto the layer axis (modeling/stacking.py); the
two layouts convert both ways for arrays, shapes and logical-axis boxes; the optimizer on stacked
parameters (optim/transforms.per_layer_view) gives the unrolled optimizer's updates and state; the HF and
params-directory writers unstack. The training-level checks (a progressive-distillation run across a phase
boundary, resume, cross-layout reads of a checkpoint) are in tests/test_scan_training.py.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import traverse_util

from mobilebert_jax import get_preset, model_source, optim, partitioning
from mobilebert_jax.convert import hf, native
from mobilebert_jax.distill import strategies
from mobilebert_jax.modeling import MobileBertForPreTraining, stacking
from synthetic_training import COMMON  # the experiments' optimizer values (the library holds none)

LAYERS, SEQ = 3, 8
FAMILIES = ("mobilebert_test", "ib_bert_test", "mobilebert_tiny_test", "bert_test", "mobilebert_no_opt_test")


def _inputs():
    rng = np.random.default_rng(0)
    ids = jnp.asarray(rng.integers(1, 500, (2, SEQ)), jnp.int32)
    mask = jnp.asarray(np.arange(SEQ)[None] < np.array([[SEQ], [SEQ - 3]]), jnp.int32)  # one padded row
    return ids, mask


def _models(name: str, **fields):
    c = get_preset(name, num_hidden_layers=LAYERS, **fields)
    return MobileBertForPreTraining(c), MobileBertForPreTraining(c.replace(scan_layers=True))


def _unrolled_params(model, ids):
    # Scaled up from the init so that every layer changes the features noticeably.
    params = nn.unbox(model.init(jax.random.key(1), ids)["params"])
    return jax.tree.map(lambda x: x * 2.0, params)


def _flat(tree) -> dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in traverse_util.flatten_dict(tree, sep="/").items()}


def _assert_close(a, b, rtol=2e-6, atol=2e-6, what=""):
    a, b = (_flat(x) if isinstance(x, dict) else {"": np.asarray(x)} for x in (a, b))
    assert a.keys() == b.keys(), sorted(set(a) ^ set(b))[:5]
    for k in a:
        scale = float(np.abs(b[k]).max()) or 1.0
        np.testing.assert_allclose(a[k], b[k], rtol=rtol, atol=atol * scale, err_msg=f"{what} {k}")


def _apply(model, params, ids, mask):
    return model.apply({"params": params}, ids, attention_mask=mask, output_hidden_states=True,
                       output_attention_scores=True)


def test_scanned_init_is_the_stacked_layout_with_a_replicated_layer_axis():
    model, scanned = _models("mobilebert_test")
    ids, _ = _inputs()
    unrolled = jax.eval_shape(lambda: model.init(jax.random.key(0), ids)["params"])
    stacked = jax.eval_shape(lambda: scanned.init(jax.random.key(0), ids)["params"])
    assert stacking.is_stacked(stacked) and not stacking.is_stacked(unrolled)
    shapes = lambda t: {k: v.shape for k, v in _flat_boxes(t).items()}  # noqa: E731
    assert shapes(stacked) == shapes(stacking.stack(unrolled))
    assert shapes(stacking.unstack(stacked)) == shapes(unrolled)
    kernel = stacked["mobilebert"]["encoder"]["layers"]["attention"]["self"]["query"]["kernel"]
    assert kernel.names == ("layers", "bottleneck", "qkv")
    # fsdp and tensor still shard each layer's own dimensions; the layer axis is on every device.
    mesh = jax.sharding.Mesh(np.array(jax.devices()).reshape(1, 4, 2), partitioning.MESH_AXES)
    sharding = partitioning.logical_shardings(stacked, mesh)
    spec = sharding["mobilebert"]["encoder"]["layers"]["attention"]["self"]["query"]["kernel"].spec
    assert tuple(spec) == (None, "fsdp", "tensor")


def _flat_boxes(tree):
    return {k: (v.unbox(apply_constraint=False) if isinstance(v, nn.Partitioned) else v)
            for k, v in traverse_util.flatten_dict(tree, sep="/").items()}


@pytest.mark.parametrize("name", FAMILIES)
def test_scanned_forward_equals_unrolled(name):
    """Outputs, every hidden state and every layer's masked attention scores, on a padded batch."""
    model, scanned = _models(name)
    ids, mask = _inputs()
    params = _unrolled_params(model, ids)
    want = _apply(model, params, ids, mask)
    got = _apply(scanned, stacking.stack(params), ids, mask)
    assert got.keys() == want.keys()
    assert len(got["hidden_states"]) == LAYERS + 1 and len(got["attention_scores"]) == LAYERS
    for key in want:
        for i, (g, w) in enumerate(zip(jax.tree.leaves(got[key]), jax.tree.leaves(want[key]))):
            _assert_close(np.asarray(g), np.asarray(w), what=f"{name} {key}[{i}]")
    # Without the optional outputs the scan emits none (static shapes): same last state.
    plain = scanned.apply({"params": stacking.stack(params)}, ids, attention_mask=mask)
    assert "hidden_states" not in plain and "attention_scores" not in plain
    _assert_close(np.asarray(plain["mlm_logits"]), np.asarray(want["mlm_logits"]), what=name)


@pytest.mark.parametrize("name,fields", [("mobilebert_test", {}), ("mobilebert_test", {"remat": True}),
                                         ("ib_bert_test", {"remat": True}),
                                         ("mobilebert_test", {"explicit_weight_gradients": True})])
def test_scanned_gradients_equal_unrolled(name, fields):
    """Gradients of a loss on the logits, every hidden state and every attention map (what distillation uses)."""
    model, scanned = _models(name, **fields)
    ids, mask = _inputs()
    params = _unrolled_params(model, ids)

    def loss(p, m):
        out = _apply(m, p, ids, mask)
        return (jnp.mean(out["mlm_logits"] ** 2) + sum(jnp.mean(h ** 2) for h in out["hidden_states"])
                + sum(jnp.mean(jax.nn.log_softmax(s) ** 2) for s in out["attention_scores"]))

    want = jax.jit(jax.grad(loss), static_argnums=1)(params, model)
    got = jax.jit(jax.grad(loss), static_argnums=1)(stacking.stack(params), scanned)
    assert stacking.is_stacked(got)
    _assert_close(stacking.unstack(got), want, rtol=1e-5, atol=1e-5, what=f"{name} {fields}")


def test_stack_and_unstack_round_trip_arrays_shapes_and_boxes():
    model, scanned = _models("mobilebert_tiny_test")
    ids, _ = _inputs()
    boxed = model.init(jax.random.key(0), ids)["params"]
    params = nn.unbox(boxed)
    stacked = stacking.stack(params)
    key = "mobilebert/encoder/layers/attention/self/query/kernel"
    np.testing.assert_array_equal(_flat(stacked)[key][2], _flat(params)[key.replace("layers", "layer_2")])
    _assert_close(stacking.unstack(stacked), params, rtol=0, atol=0)
    assert stacking.stack(stacked) is stacked and stacking.unstack(params) is params  # already in that layout
    numpy_tree = jax.tree.map(np.asarray, params)
    assert isinstance(_flat(stacking.stack(numpy_tree))[key], np.ndarray)
    # Flat '/'-keyed dicts (model_source's shapes and safetensors) convert the same way.
    flat = stacking.stack(_flat(params))
    assert flat.keys() == _flat(stacked).keys()
    shapes = {k: v.shape for k, v in flat.items()}
    assert stacking.unstacked_shapes(shapes) == {k: v.shape for k, v in _flat(params).items()}
    # Boxes: the layer axis name goes on and off with the axis.
    box = traverse_util.flatten_dict(stacking.stack(boxed), sep="/")[key]
    assert box.names == ("layers", "bottleneck", "qkv") and box.value.shape[0] == LAYERS
    back = traverse_util.flatten_dict(stacking.unstack(stacking.stack(boxed)), sep="/")[
        key.replace("layers", "layer_1")]
    assert back.names == ("bottleneck", "qkv")
    abstract = jax.eval_shape(lambda: scanned.init(jax.random.key(0), ids)["params"])
    unrolled = traverse_util.flatten_dict(stacking.unstack(abstract), sep="/")
    assert unrolled[key.replace("layers", "layer_0")].names == ("bottleneck", "qkv")
    # Layers missing from an unrolled tree cannot be stacked.
    broken = {k: v for k, v in _flat(params).items() if "/layer_1/" not in k}
    with pytest.raises(ValueError, match="not 0..L-1"):
        stacking.stack(broken)


def _progressive_optimizer(layers: int):
    opt = COMMON.optimizer("lamb", lr=1.5e-3)
    opt.groups = strategies.progressive_groups(layers, phase_steps=2, lower_layer_multiplier=0.1)
    opt.exclude = (r"^cls/",)
    return opt


@pytest.mark.parametrize("progressive", [True, False], ids=["progressive groups", "one group"])
def test_optimizer_on_stacked_parameters_equals_unrolled(progressive):
    """Progressive groups (a group, multiplier and moment gate per layer: the stacked tensors are split per layer,
    the optimizer state is the unrolled one) or none (the tensors stay stacked, LAMB's trust ratio per layer):
    with exclusion and clipping, the stacked updates are the unrolled ones stacked, within float32 rounding."""
    model, scanned = _models("mobilebert_test")
    ids, mask = _inputs()
    params = _unrolled_params(model, ids)
    opt = _progressive_optimizer(LAYERS) if progressive else COMMON.optimizer("lamb", lr=1.5e-3)
    opt.exclude = (r"^cls/",)
    tx = optim.build_optimizer(opt, params)
    tx_scan = optim.build_optimizer(opt, stacking.stack(params))  # group patterns checked on the unrolled view
    rng = np.random.default_rng(0)
    grads = [jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), jnp.float32), params) for _ in range(4)]
    state, state_scan = tx.init(params), tx_scan.init(stacking.stack(params))
    if progressive:
        assert jax.tree.structure(state) == jax.tree.structure(state_scan)
    else:  # the moments stacked like the parameters
        keys = [jax.tree_util.keystr(k) for k, _ in jax.tree_util.tree_leaves_with_path(state_scan)]
        assert any("['layers']" in k for k in keys) and not any("['layer_0']" in k for k in keys)
    p, p_scan = params, stacking.stack(params)
    update, update_scan = jax.jit(tx.update), jax.jit(tx_scan.update)
    for g in grads:  # steps 0..3: phases 0 and 1 of 2 steps each
        u, state = update(g, state, p)
        u_scan, state_scan = update_scan(stacking.stack(g), state_scan, p_scan)
        assert stacking.is_stacked(u_scan)
        # The clipping norm sums a stacked tensor in one reduction: rounding apart, the same updates.
        _assert_close(stacking.unstack(u_scan), u, rtol=1e-5, atol=1e-5, what="updates")
        p, p_scan = optax.apply_updates(p, u), optax.apply_updates(p_scan, u_scan)
    if progressive:
        for a, b in zip(jax.tree.leaves(state_scan), jax.tree.leaves(state)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
        layer2 = [k for k in _flat(u) if "/layer_2/" in k]
        assert layer2 and all(not _flat(stacking.unstack(u_scan))[k].any() for k in layer2)  # above the phase


def test_optimizer_state_shards_from_a_scanned_models_boxes():
    """The trainer derives the state's shardings from eval_shape(tx.init) of the boxed stacked parameters."""
    _, scanned = _models("mobilebert_test")
    ids, _ = _inputs()
    boxed = jax.eval_shape(lambda: scanned.init(jax.random.key(0), ids)["params"])
    tx = optim.build_optimizer(_progressive_optimizer(LAYERS), boxed)
    state = jax.eval_shape(tx.init, boxed)
    mesh = jax.sharding.Mesh(np.array(jax.devices()).reshape(1, 4, 2), partitioning.MESH_AXES)
    shardings = partitioning.logical_shardings(state, mesh)
    specs = {jax.tree_util.keystr(k): tuple(s.spec) for k, s in jax.tree_util.tree_leaves_with_path(shardings)}
    moments = [v for k, v in specs.items() if "'layer_1'" in k and "'query'" in k and "'kernel'" in k]
    assert moments and all(s == ("fsdp", "tensor") for s in moments), specs


def test_hf_and_params_directories_hold_the_unrolled_layout(tmp_path):
    """Writing a scanned model gives the same files as the unrolled model; reading them back into either layout."""
    model, scanned = _models("mobilebert_test", attention_mask_mode="additive")
    ids, _ = _inputs()
    params = _unrolled_params(model, ids)
    stacked = stacking.stack(params)
    hf.to_hf(scanned.config, stacked, str(tmp_path / "hf"))
    config, back = hf.from_hf(str(tmp_path / "hf"))
    assert not config.scan_layers
    _assert_close(back, params, rtol=0, atol=0)
    native.save_params(str(tmp_path / "params"), scanned.config, stacked)
    source = model_source.open_source(str(tmp_path / "params"), "test")
    assert not stacking.is_stacked(source.shapes) and not source.config.scan_layers
    # Checked and read into a scanned model's target: stacked on the way in.
    abstract = nn.unbox(jax.eval_shape(lambda: scanned.init(jax.random.key(0), ids)["params"]))
    model_source.check_architecture(source, scanned.config, model_source.flat_shapes(abstract), "test", "model")
    one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = partitioning.with_shardings(abstract, jax.tree.map(lambda _: one, abstract))
    _assert_close(model_source.read(source, target), stacked, rtol=0, atol=0)
    # A mismatch is named by its unrolled path either way.
    other = get_preset("mobilebert_test", num_hidden_layers=LAYERS + 1, scan_layers=True)
    wrong = nn.unbox(jax.eval_shape(lambda: MobileBertForPreTraining(other).init(jax.random.key(0), ids)["params"]))
    with pytest.raises(Exception, match="mobilebert/encoder/layer_3/"):
        model_source.check_architecture(source, other, model_source.flat_shapes(wrong), "test", "model")


def test_progressive_groups_see_each_layer_of_a_scanned_student():
    _, scanned = _models("mobilebert_test")
    ids, _ = _inputs()
    boxed = jax.eval_shape(lambda: scanned.init(jax.random.key(0), ids)["params"])
    paths = strategies.first_layer_paths(boxed)
    assert sorted(paths) == list(range(LAYERS))
    assert all(p.startswith(f"mobilebert/encoder/layer_{i}/") for i, p in paths.items())
    strategies.check_progressive_groups(ml_collections.ConfigDict(
        dict(groups=strategies.progressive_groups(LAYERS, 2, 0.1))), boxed, LAYERS, 2)


def test_a_config_json_cannot_claim_stacked_layers(tmp_path):
    import json

    from mobilebert_jax.config import MobileBertConfig
    from mobilebert_jax.errors import ConfigError

    d = get_preset("mobilebert_test").to_hf_dict()
    assert "scan_layers" not in d["mobilebert_jax"]  # written by no one: the files hold unrolled layers
    d["mobilebert_jax"]["scan_layers"] = True
    path = tmp_path / "config.json"
    path.write_text(json.dumps(d))
    with pytest.raises(ConfigError, match="config.json: 'mobilebert_jax.scan_layers' is true"):
        MobileBertConfig.from_hf_json(str(path))
