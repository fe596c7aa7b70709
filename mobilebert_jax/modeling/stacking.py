"""The two layouts of the encoder's parameters, and the one place that converts between them.

- unrolled (`config.scan_layers=False`, and always on disk in HF and params directories):
  `.../encoder/layer_{i}/<path>`, one subtree per layer;
- stacked (`config.scan_layers=True`, the model runs its layers under `nn.scan`):
  `.../encoder/layers/<path>`, each leaf with a leading layer axis of size L
  (logical axis name "layers", which partitioning.py maps to no mesh axis).

`unstack` and `stack` convert whole trees either way and leave a tree already in
the asked layout unchanged. Leaves may be numpy or JAX arrays, `jax.ShapeDtypeStruct`s
or Flax's logical-axis boxes (the layer axis name is removed or added). The model
reader (model_source.py), the HF and params-directory writers, the optimizer
(optim/transforms.per_layer_view) and every path-based rule (progressive groups)
go through these functions, so a regex on `layer_3` means the same in both layouts.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

STACKED = "layers"  # the scanned encoder's module name, and the logical name of the layer axis
AXIS_PARAMS = {nn.PARTITION_NAME: STACKED}  # what nn.scan's metadata_params and the boxes' add/remove_axis take
_UNROLLED_KEY = re.compile(r"^(?P<prefix>(?:.*/)?encoder/)layer_(?P<index>\d+)/(?P<suffix>.+)$")
_STACKED_KEY = re.compile(r"^(?P<prefix>(?:.*/)?encoder/)" + STACKED + r"/(?P<suffix>.+)$")


def layer_name(i: int) -> str:
    return f"layer_{i}"


def is_stacked_path(path: str) -> bool:
    """'mobilebert/encoder/layers/...': a stacked leaf's '/'-joined path."""
    return bool(_STACKED_KEY.match(path))


def unrolled_path(path: str, layer: int) -> str:
    """The path of `layer`'s slice of a stacked leaf (other paths unchanged)."""
    m = _STACKED_KEY.match(path)
    return f"{m['prefix']}{layer_name(layer)}/{m['suffix']}" if m else path


def is_stacked(tree: Any) -> bool:
    """True when `tree` (nested dicts, or a flat '/'-keyed dict) holds stacked encoder parameters."""
    if not isinstance(tree, Mapping):
        return False
    if _is_flat(tree):
        return any(_STACKED_KEY.match(k) for k in tree)
    return any((k == "encoder" and isinstance(v, Mapping) and STACKED in v) or is_stacked(v) for k, v in tree.items())


def unstack(tree: Any, only: Optional[Callable[[str, int], bool]] = None) -> Any:
    """`tree` in the unrolled layout: each stacked leaf [L, ...] becomes L leaves under `layer_{i}`.

    With `only(path, L)`, just the stacked leaves it is true for (the optimizer's partial view)."""
    if not is_stacked(tree):
        return tree
    flat, was_flat = _flat(tree), _is_flat(tree)
    out = {}
    for key, leaf in flat.items():
        if not is_stacked_path(key) or (only is not None and not only(key, _layer_count(leaf))):
            out[key] = leaf
            continue
        for i in range(_layer_count(leaf)):
            out[unrolled_path(key, i)] = _take(leaf, i)
    return out if was_flat else traverse_util.unflatten_dict(out, sep="/")


def stack(tree: Any) -> Any:
    """`tree` in the stacked layout: leaves `layer_0..layer_{L-1}/<path>` become one [L, ...] leaf `layers/<path>`."""
    if not isinstance(tree, Mapping):
        return tree
    flat, was_flat = _flat(tree), _is_flat(tree)
    out, groups = {}, {}
    for key, leaf in flat.items():
        m = _UNROLLED_KEY.match(key)
        if m:
            groups.setdefault(f"{m['prefix']}{STACKED}/{m['suffix']}", {})[int(m["index"])] = leaf
        else:
            out[key] = leaf
    if not groups:
        return tree
    counts = {len(layers) for layers in groups.values()}
    for key, layers in groups.items():
        if sorted(layers) != list(range(len(layers))) or len(counts) > 1:
            raise ValueError(f"cannot stack {key!r}: layers {sorted(layers)} are not 0..L-1 with the same L as the "
                             f"other encoder parameters (counts {sorted(counts)})")
        out[key] = _stack([layers[i] for i in range(len(layers))])
    return out if was_flat else traverse_util.unflatten_dict(out, sep="/")


def to_layout(tree: Any, stacked: bool) -> Any:
    """`tree` in the layout a model with `scan_layers=stacked` uses."""
    return stack(tree) if stacked else unstack(tree)


def unstacked_shapes(shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """A flat path -> shape dict in the unrolled layout (what architecture checks compare)."""
    out = {}
    for key, shape in shapes.items():
        if not is_stacked_path(key):
            out[key] = tuple(shape)
            continue
        for i in range(shape[0]):
            out[unrolled_path(key, i)] = tuple(shape[1:])
    return out


def _is_flat(tree: Mapping) -> bool:
    return bool(tree) and all(isinstance(k, str) and "/" in k for k in tree)


def _flat(tree: Any) -> dict[str, Any]:
    if _is_flat(tree):
        return tree
    return traverse_util.flatten_dict(tree, sep="/")


def _is_box(leaf: Any) -> bool:
    return isinstance(leaf, nn.Partitioned)  # and its subclass nn.LogicallyPartitioned, what primitives.py makes


def _layer_count(leaf: Any) -> int:
    return (leaf.unbox(apply_constraint=False) if _is_box(leaf) else leaf).shape[0]


def _take(leaf: Any, i: int) -> Any:
    if _is_box(leaf):
        return leaf.replace_boxed(_take(leaf.unbox(apply_constraint=False), i)).remove_axis(0, AXIS_PARAMS)
    if isinstance(leaf, jax.ShapeDtypeStruct):
        return jax.ShapeDtypeStruct(leaf.shape[1:], leaf.dtype)
    return leaf[i]


def _stack(leaves: list[Any]) -> Any:
    first = leaves[0]
    if _is_box(first):
        values = [x.unbox(apply_constraint=False) for x in leaves]
        return first.replace_boxed(_stack(values)).add_axis(0, AXIS_PARAMS)
    if isinstance(first, jax.ShapeDtypeStruct):
        return jax.ShapeDtypeStruct((len(leaves), *first.shape), first.dtype)
    if isinstance(first, np.ndarray):
        return np.stack(leaves)
    return jnp.stack(leaves)
