"""config_schema.Schema: the one reader of config sections, and the defaults a resumed run takes."""

import ml_collections
import pytest

from mobilebert_jax import ConfigError
from mobilebert_jax.config_schema import NO_DEFAULT, Schema
from mobilebert_jax.optim import config as optim_config

INNER = Schema(fields=("kind", "power"), optional=dict(power=1.0))
OUTER = Schema(fields=("name", "inner", "groups", "limit"), optional=dict(limit=None, groups={}),
               sections=dict(inner=INNER), entries=dict(groups=INNER))


def test_read_fills_optional_fields_and_names_unknown_and_missing_ones():
    cfg = ml_collections.ConfigDict(dict(name="a", inner=dict(kind="k")))
    assert OUTER.read(cfg, "config.s") == dict(name="a", inner=cfg.inner, groups={}, limit=None)
    with pytest.raises(ConfigError, match=r"config.s has unknown field\(s\) \['nam'\]; known fields: \['name', "):
        OUTER.read(dict(nam="a", inner={}), "config.s")
    with pytest.raises(ConfigError, match=r"config.s is missing required field\(s\) \['inner', 'name'\]: set "
                                          r"config.s.name, config.s.inner$"):
        OUTER.read({}, "config.s")
    with pytest.raises(ConfigError, match="config.s must be a ConfigDict or dict, got int"):
        OUTER.read(3, "config.s")


def test_default_walks_nested_sections_and_entries():
    assert OUTER.default(("limit",)) is None
    assert OUTER.default(("inner", "power")) == 1.0
    assert OUTER.default(("groups", "any_name", "power")) == 1.0
    assert OUTER.default(("name",)) is NO_DEFAULT  # required: no default
    assert OUTER.default(("inner", "kind")) is NO_DEFAULT
    assert OUTER.default(("groups", "power")) is NO_DEFAULT  # an entry's name comes first
    assert optim_config.OPTIMIZER.default(("schedule", "decay_origin")) == "warmup_end"


def test_a_schema_declares_every_field_it_gives_a_default():
    with pytest.raises(ValueError, match=r"\['power'\]"):
        Schema(fields=("kind",), optional=dict(power=1.0))
