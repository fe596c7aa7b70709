"""Mesh construction, logical-axis rules and batch placement on 8 fake CPU devices (tests/conftest.py)."""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from mobilebert_jax import ConfigError, partitioning

EMBED = 6  # does not split over fsdp=4: exercises the replicate-instead fallback


class Toy(nn.Module):
    """One parameter per logical name the real model uses, and one constrained activation."""

    @nn.compact
    def __call__(self, ids_BxT):
        def param(name, shape, names):
            return self.param(name, nn.with_logical_partitioning(nn.initializers.normal(1.0), names), shape)

        word = param("word", (32, EMBED), ("vocab", "embed"))
        tri = param("trigram", (3 * EMBED, 16), ("trigram", "hidden"))
        param("position", (10, 16), ("position", "hidden"))
        param("token_type", (2, 16), ("token_type", "hidden"))
        param("down", (16, 8), ("hidden", "bottleneck"))
        param("query", (8, 8), ("bottleneck", "qkv"))
        param("ffn_in", (8, 12), ("bottleneck", "mlp"))
        param("ffn_out", (12, 8), ("mlp", "bottleneck"))
        param("up", (8, 16), ("bottleneck", "hidden"))
        param("norm", (16,), ("norm",))
        param("transform", (16, 16), ("hidden", "transform"))
        param("extra", (10, 32), ("extra_embed", "vocab"))
        param("cls", (16, 3), ("hidden", "classes"))
        e = word[ids_BxT]
        x = jnp.concatenate([e, e, e], axis=-1) @ tri
        return nn.with_logical_constraint(x, ("batch", "length", "hidden"))


DEFAULT_SPECS = {
    "word": P("tensor", "fsdp"), "trigram": P(None, "fsdp"), "position": P(None, "fsdp"),
    "token_type": P(None, "fsdp"), "down": P("fsdp", None), "query": P("fsdp", "tensor"),
    "ffn_in": P("fsdp", "tensor"), "ffn_out": P("tensor", "fsdp"), "up": P(None, "fsdp"), "norm": P(None),
    "transform": P("fsdp", None), "extra": P("fsdp", "tensor"), "cls": P("fsdp", None),
}


def abstract_params():
    return jax.eval_shape(Toy().init, jax.random.key(0), jnp.zeros((2, 4), jnp.int32))


@pytest.mark.parametrize("shape, changed", [
    ((8, 1, 1), {}),
    ((2, 4, 1), {"word": P("tensor", None), "extra": P(None, "tensor")}),  # 6 and 10 rows do not split over fsdp=4
    ((2, 2, 2), {}),
])
def test_param_specs(shape, changed):
    mesh = partitioning.make_mesh({"shape": shape})
    assert dict(mesh.shape) == dict(zip(partitioning.MESH_AXES, shape))
    shardings = partitioning.logical_shardings(abstract_params(), mesh)["params"]
    assert {k: s.spec for k, s in shardings.items()} == {**DEFAULT_SPECS, **changed}
    assert all(s.mesh == mesh for s in shardings.values())


def test_strict_refuses_an_uneven_split():
    mesh = partitioning.make_mesh({"shape": (2, 4, 1)})
    with pytest.raises(ConfigError, match=r"\['params'\]\['extra'\]: dimension 0 \(size 10\) does not split over mesh axes fsdp"):
        partitioning.logical_shardings(abstract_params(), mesh, strict=True)


def test_minus_one_fills_the_remaining_devices():
    assert partitioning.resolve_mesh_shape((2, -1, 2), 8) == (2, 2, 2)
    assert dict(partitioning.make_mesh({"shape": (-1, 1, 1)}).shape) == {"data": 8, "fsdp": 1, "tensor": 1}


@pytest.mark.parametrize("shape, message", [
    ((3, 1, 1), "config.mesh.shape=(3, 1, 1) covers 3 devices, but 8 are available"),
    ((4, 4, 1), "covers 16 devices, but 8"),
    ((-1, 3, 1), "the fixed axes (3 devices) do not divide the 8 devices"),
    ((-1, -1, 2), "at most one entry may be -1"),
    ((8, 1), "must be 3 integers"),
    ((8, 0, 1), "entries must be positive integers or a single -1"),
])
def test_bad_mesh_shape_names_the_field(shape, message):
    with pytest.raises(ConfigError) as e:
        partitioning.make_mesh({"shape": shape})
    assert message in str(e.value) and "config.mesh.shape" in str(e.value)


def test_mesh_config_errors():
    with pytest.raises(ConfigError, match=r"config.mesh has unknown field\(s\) \['shap'\]"):
        partitioning.make_mesh({"shap": (8, 1, 1)})
    with pytest.raises(ConfigError, match=re.escape("config.mesh is missing required field(s) ['shape']")):
        partitioning.make_mesh({})
    with pytest.raises(ConfigError, match="config.mesh.shape is required"):
        partitioning.make_mesh({"shape": None})
    # Off TPU each process would be a slice, and the 8 CPU devices here are one process.
    with pytest.raises(ConfigError, match=r"config.mesh.dcn_shape=\(2, 1, 1\) asks for 2 slices, but the devices "
                                          r"form one slice: all 8 are on one process"):
        partitioning.make_mesh({"shape": (8, 1, 1), "dcn_shape": (2, 1, 1)})
    with pytest.raises(ConfigError, match=r"config.mesh.dcn_shape=\(2, 1\): must be 3 positive integers"):
        partitioning.make_mesh({"shape": (8, 1, 1), "dcn_shape": (2, 1)})
    assert dict(partitioning.make_mesh({"shape": (8, 1, 1), "dcn_shape": (1, 1, 1)}).shape)["data"] == 8


def test_batch_size_checks():
    partitioning.check_batch_size(16, (2, 4, 1))
    partitioning.check_batch_size(2, (1, 2, 4))
    with pytest.raises(ConfigError, match=r"config.batch_size=12 is not divisible by data=2 \* fsdp=4 = 8, the batch "
                                          r"shards of config.mesh.shape=\(2, 4, 1\)"):
        partitioning.check_batch_size(12, (2, 4, 1))
    with pytest.raises(ConfigError, match="config.batch_size=8 is not divisible by the 3 processes"):
        partitioning.check_batch_size(8, (8, 1, 1), process_count=3)
    with pytest.raises(ConfigError, match="config.batch_size=0: must be a positive integer"):
        partitioning.check_batch_size(0, (8, 1, 1))


def test_rules_from_config():
    rules = partitioning.logical_rules({"shape": (8, 1, 1), "rules": [("vocab", None), ("new_axis", ["data", "fsdp"])]})
    assert dict(rules)["vocab"] is None and dict(rules)["new_axis"] == ("data", "fsdp")
    assert [r[0] for r in rules[:4]] == [r[0] for r in partitioning.DEFAULT_RULES[:4]]  # replaced in place
    mesh = partitioning.make_mesh({"shape": (2, 2, 2)})
    assert partitioning.logical_shardings(abstract_params(), mesh, rules)["params"]["word"].spec == P(None, "fsdp")
    with pytest.raises(ConfigError, match=r"config.mesh.rules\[0\]: unknown mesh axis/axes \['model'\]"):
        partitioning.logical_rules({"shape": (8, 1, 1), "rules": [("vocab", "model")]})
    with pytest.raises(ConfigError, match=r"config.mesh.rules\[0\]=.*must be a \(logical name, mesh axes\) pair"):
        partitioning.logical_rules({"shape": (8, 1, 1), "rules": ["vocab"]})


def test_unknown_logical_name_is_an_error():
    rules = tuple(r for r in partitioning.DEFAULT_RULES if r[0] != "mlp")
    mesh = partitioning.make_mesh({"shape": (8, 1, 1)})
    with pytest.raises(ConfigError, match=r"logical axis name\(s\) \['mlp'\] .*\['params'\]\['ffn_in'\]"):
        partitioning.logical_shardings(abstract_params(), mesh, rules)


def test_sharded_forward_and_global_batch():
    mesh = partitioning.make_mesh({"shape": (2, 2, 2)})
    rules = partitioning.DEFAULT_RULES
    abstract = abstract_params()
    shardings = partitioning.logical_shardings(abstract, mesh, rules)
    params = jax.jit(lambda k: nn.meta.unbox(Toy().init(k, jnp.zeros((2, 4), jnp.int32))),
                     out_shardings=shardings)(jax.random.key(0))
    assert params["params"]["ffn_in"].sharding == NamedSharding(mesh, P("fsdp", "tensor"))

    ids = np.arange(8 * 4, dtype=np.int32).reshape(8, 4) % 32
    batch = partitioning.make_global_batch({"ids": ids, "weights": np.ones((8,), np.float32)}, mesh, rules)
    assert batch["ids"].shape == (8, 4)
    assert batch["ids"].sharding.is_equivalent_to(NamedSharding(mesh, P(("data", "fsdp"))), 2)
    np.testing.assert_array_equal(np.asarray(batch["ids"]), ids)

    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        out = jax.jit(lambda p, b: Toy().apply(p, b["ids"]))(params, batch)
    assert out.sharding.is_equivalent_to(NamedSharding(mesh, P(("data", "fsdp"), None, None)), 3)

    targets = partitioning.with_shardings(abstract, shardings)
    assert targets["params"]["word"].sharding == shardings["params"]["word"]
    assert targets["params"]["word"].shape == (32, EMBED)


@pytest.mark.parametrize("preset", ["mobilebert_test", "ib_bert_test"])
def test_the_real_model_is_fully_covered_by_the_rules(preset):
    from mobilebert_jax import get_preset
    from mobilebert_jax.modeling import MobileBertForPreTraining

    model = MobileBertForPreTraining(get_preset(preset))
    abstract = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((2, 8), jnp.int32))
    leaves = jax.tree.leaves(abstract, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
    assert all(isinstance(x, nn.LogicallyPartitioned) for x in leaves)  # nothing silently replicated
    shardings = partitioning.logical_shardings(abstract, partitioning.make_mesh({"shape": (2, 2, 2)}), strict=True)
    specs = [s.spec for s in jax.tree.leaves(shardings)]
    assert any("tensor" in spec for spec in specs) and any("fsdp" in spec for spec in specs)
