"""Parameter paths as strings, and the rule that exempts norms and biases.

Every optimizer decision that depends on *which* parameter a leaf is (weight
decay, trust ratio, groups, exclusion) goes through `path_of`, so a path seen
in a config regex is exactly the path these functions match against.
"""

from __future__ import annotations

import re
from typing import Any, Callable

import flax.linen as nn
import jax

PathFn = Callable[[tuple[str, ...]], bool]

_NORM_MODULE = re.compile("norm", re.IGNORECASE)


def path_keys(key_path: jax.tree_util.KeyPath) -> tuple[str, ...]:
    """('params', 'encoder', 'layer_0', ..., 'kernel') for a JAX key path."""
    out = []
    for key in key_path:
        if isinstance(key, jax.tree_util.DictKey):
            out.append(str(key.key))
        elif isinstance(key, jax.tree_util.GetAttrKey):
            out.append(key.name)
        elif isinstance(key, jax.tree_util.SequenceKey):
            out.append(str(key.idx))
        else:  # FlattenedIndexKey and custom nodes
            out.append(str(key))
    return tuple(out)


def path_of(key_path: jax.tree_util.KeyPath) -> str:
    """'params/encoder/layer_0/attention/query/kernel': what config regexes are matched against."""
    return "/".join(path_keys(key_path))


def is_norm_or_bias(keys: tuple[str, ...]) -> bool:
    """True for norm scales/offsets and biases: TF1 neither decays nor trust-ratio-scales them.

    The rule, from the path's last key and its parent module names:
      - a leaf named `bias` (Dense biases and norm offsets alike);
      - a leaf named `scale` (Flax's LayerNorm/RMSNorm and our NoNorm call
        their multiplicative parameter `scale`; no other module here does);
      - any leaf under a module whose name contains "norm", any case
        (`LayerNorm`, `layer_norm`, `NoNorm_0`, `FakeLayerNorm`, ...).
    Embedding tables (`embedding`) and kernels are decayed, as in TF1, whose
    exclusion list was ["LayerNorm", "layer_norm", "bias", "FakeLayerNorm"].
    """
    if not keys:
        return False
    if keys[-1] in ("bias", "scale"):
        return True
    return any(_NORM_MODULE.search(k) for k in keys[:-1])


def map_with_path(fn: Callable[[str, tuple[str, ...]], Any], tree: Any) -> Any:
    """tree_map with (path string, path keys); Flax boxes (nn.Partitioned) count as leaves.

    Treating boxes as leaves makes the result line up with both the boxed tree
    (for `jax.eval_shape(tx.init, boxed_params)`) and the unboxed one.
    """
    return jax.tree_util.tree_map_with_path(
        lambda kp, _: fn(path_of(kp), path_keys(kp)), tree,
        is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata))


def mask(predicate: PathFn) -> Callable[[Any], Any]:
    """An optax mask function: True where `predicate(path keys)` holds."""
    return lambda tree: map_with_path(lambda _, keys: predicate(keys), tree)
