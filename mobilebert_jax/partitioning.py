"""The device mesh, logical-axis rules, and the shardings of parameters and batches.

Mesh axes are ("data", "fsdp", "tensor"): `data` replicates parameters,
`fsdp` shards parameters and batch alike (ZeRO-3 style), `tensor` shards the
wide matmul dimensions (vocabulary, FFN, attention projections).

The model names every parameter dimension with a logical axis
(`nn.with_logical_partitioning`) and activations with
`nn.with_logical_constraint`; the rules below map those names to mesh axes.
Flax resolves a tensor's names rule by rule, in order, and a mesh axis can
be used once per tensor, so order is priority: with `batch` first, an
activation [batch, length, hidden] shards only the batch; with the
tensor-parallel names before `hidden`, a kernel [hidden, mlp] becomes
(fsdp, tensor).

Config fields read here (`config.mesh`):
  shape      (data, fsdp, tensor); one entry may be -1 = all remaining devices
  dcn_shape  optional: how much of each axis crosses slices of a multi-slice
             TPU job (default: data = number of slices, the others 1). On
             CPU and GPU, where every device reports slice 0, each process
             stands in for a slice, and only when dcn_shape asks for more
             than one (MaxText's `process_is_granule`)
  rules      optional: [(logical name, mesh axes or None), ...]; replaces the
             default rule of the same name, new names are appended

The trainer and the AOT compiler trace, compile and run the steps under
`jax.set_mesh(mesh)` and `nn.logical_axis_rules(rules)` (`trainer.Program.context`),
so that the activation constraints resolve when the step is traced.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Optional, Sequence, Union

import flax.linen as nn
import jax
import numpy as np
from absl import logging
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mobilebert_jax.config_schema import Schema
from mobilebert_jax.errors import ConfigError

MESH_AXES = ("data", "fsdp", "tensor")
MeshAxes = Union[None, str, tuple[str, ...]]
Rules = tuple[tuple[str, MeshAxes], ...]

DEFAULT_RULES: Rules = (
    # Activations.
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("heads", "tensor"),
    # Parameters: tensor-parallel dimensions first, then fsdp for the other dimension.
    ("vocab", "tensor"),
    ("mlp", "tensor"),
    ("qkv", "tensor"),
    ("hidden", "fsdp"),
    ("embed", "fsdp"),
    # The IB-BERT teacher's 1024-d bottleneck kernels are its largest; shard them too.
    ("bottleneck", "fsdp"),
    ("trigram", "fsdp"),
    ("transform", "fsdp"),
    # The MLM head's extra output kernel [hidden - embed, vocab] is, with the word embeddings, the largest
    # tensor of a MobileBERT; 30522 = 2 x 15261 rows split over no mesh, so its other dimension takes fsdp.
    ("extra_embed", "fsdp"),
    ("position", None),
    ("token_type", None),
    ("classes", None),
    ("norm", None),
    # The layer axis of a scanned encoder's stacked parameters (config.scan_layers): every device holds every
    # layer (the scan reads one layer per step); the rules above still shard each layer's own dimensions.
    ("layers", None),
)

SCHEMA = Schema(fields=("shape", "dcn_shape", "rules"), optional=dict(dcn_shape=None, rules=None))


def _mesh_fields(mesh_cfg: Any) -> dict[str, Any]:
    fields = SCHEMA.read(mesh_cfg, "config.mesh")
    if fields["shape"] is None:
        raise ConfigError("config.mesh.shape is required: a (data, fsdp, tensor) triple such as (-1, 1, 1)")
    return fields


def resolve_mesh_shape(shape: Sequence[int], device_count: int, where: str = "config.mesh.shape") -> tuple[int, ...]:
    """`shape` with its -1 filled in; an error naming `where` unless it covers exactly `device_count` devices."""
    if isinstance(shape, str) or not isinstance(shape, Sequence) or len(shape) != len(MESH_AXES):
        raise ConfigError(f"{where}={shape!r}: must be {len(MESH_AXES)} integers for axes {MESH_AXES}")
    if any(isinstance(s, bool) or not isinstance(s, int) or (s <= 0 and s != -1) for s in shape):
        raise ConfigError(f"{where}={tuple(shape)!r}: entries must be positive integers or a single -1")
    if list(shape).count(-1) > 1:
        raise ConfigError(f"{where}={tuple(shape)!r}: at most one entry may be -1")
    known = math.prod(s for s in shape if s != -1)
    if -1 in shape:
        if device_count % known:
            raise ConfigError(f"{where}={tuple(shape)!r}: the fixed axes ({known} devices) do not divide "
                              f"the {device_count} devices available")
        shape = tuple(device_count // known if s == -1 else s for s in shape)
    if math.prod(shape) != device_count:
        raise ConfigError(f"{where}={tuple(shape)!r} covers {math.prod(shape)} devices, but {device_count} "
                          f"are available; the product must equal the device count (or use -1 for one axis)")
    return tuple(shape)


def make_mesh(mesh_cfg: Any, devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
    """The ("data", "fsdp", "tensor") mesh `config.mesh` describes, over `devices` (default: all).

    Within a slice, `mesh_utils.create_device_mesh` orders devices along the
    physical interconnect; across the slices of a multi-slice TPU job,
    `create_hybrid_device_mesh` keeps the slow data-center network on the
    axes `dcn_shape` names (by default only `data`, whose traffic is one
    gradient all-reduce per step). TPU devices say which slice they are on
    (`slice_index`); CPU and GPU devices all report slice 0, and there an
    explicit `dcn_shape` makes each process one slice, as MaxText does: how
    the two-process tests exercise the multi-slice mesh.
    """
    fields = _mesh_fields(mesh_cfg)
    devices = list(jax.devices() if devices is None else devices)
    shape = resolve_mesh_shape(fields["shape"], len(devices))
    dcn = fields.get("dcn_shape")
    if dcn is not None and (isinstance(dcn, str) or not isinstance(dcn, Sequence) or len(dcn) != len(MESH_AXES)
                            or any(isinstance(d, bool) or not isinstance(d, int) or d <= 0 for d in dcn)):
        raise ConfigError(f"config.mesh.dcn_shape={dcn!r}: must be {len(MESH_AXES)} positive integers, one per axis "
                          f"of {MESH_AXES}")
    process_is_granule = any(d.platform != "tpu" for d in devices)
    if not process_is_granule:  # compile-only devices of a TPU topology (tools.aot_compile) have no slice_index
        num_slices = 1 + max(getattr(d, "slice_index", 0) for d in devices)
    elif dcn is not None and math.prod(dcn) > 1:
        num_slices = len({d.process_index for d in devices})
    else:
        num_slices = 1
    if num_slices == 1:
        if dcn is not None and math.prod(dcn) > 1:
            granule = "slice" if not process_is_granule else "process (off TPU a process stands in for a slice)"
            raise ConfigError(f"config.mesh.dcn_shape={tuple(dcn)!r} asks for {math.prod(dcn)} slices, but the "
                              f"devices form one slice: all {len(devices)} are on one {granule}")
        return Mesh(mesh_utils.create_device_mesh(shape, devices), MESH_AXES)
    dcn = tuple(dcn or (num_slices, 1, 1))
    granules = "slices" if not process_is_granule else "processes, each standing in for a slice"
    if math.prod(dcn) != num_slices:
        raise ConfigError(f"config.mesh.dcn_shape={dcn!r}: its product must be the number of slices: the devices "
                          f"are on {num_slices} {granules}")
    if any(s % d for s, d in zip(shape, dcn)):
        raise ConfigError(f"config.mesh.dcn_shape={dcn!r} does not divide config.mesh.shape={shape!r} axis by axis")
    ici = tuple(s // d for s, d in zip(shape, dcn))
    return Mesh(mesh_utils.create_hybrid_device_mesh(ici, dcn, devices, process_is_granule=process_is_granule),
                MESH_AXES)


def logical_rules(mesh_cfg: Any = None) -> Rules:
    """DEFAULT_RULES with `config.mesh.rules` applied (same name: replaced in place; new name: appended)."""
    rules = list(DEFAULT_RULES)
    overrides = _mesh_fields(mesh_cfg).get("rules") if mesh_cfg is not None else None
    for i, rule in enumerate(overrides or ()):
        where = f"config.mesh.rules[{i}]"
        if isinstance(rule, str) or not isinstance(rule, Sequence) or len(rule) != 2 or not isinstance(rule[0], str):
            raise ConfigError(f"{where}={rule!r}: must be a (logical name, mesh axes) pair")
        name, axes = rule[0], _mesh_axes(rule[1], where)
        names = [r[0] for r in rules]
        if name in names:
            rules[names.index(name)] = (name, axes)
        else:
            rules.append((name, axes))
    return tuple(rules)


def _mesh_axes(axes: Any, where: str) -> MeshAxes:
    if axes is None:
        return None
    as_tuple = (axes,) if isinstance(axes, str) else tuple(axes)
    bad = [a for a in as_tuple if a not in MESH_AXES]
    if bad:
        raise ConfigError(f"{where}: unknown mesh axis/axes {bad}; mesh axes are {MESH_AXES}")
    return axes if isinstance(axes, str) else as_tuple


def batch_axes(rules: Rules = DEFAULT_RULES) -> tuple[str, ...]:
    """The mesh axes the batch dimension is split over (from the `batch` rule)."""
    axes = dict(rules).get("batch")
    if axes is None:
        return ()
    return (axes,) if isinstance(axes, str) else tuple(axes)


def check_batch_size(batch_size: Any, mesh_shape: Sequence[int], rules: Rules = DEFAULT_RULES,
                     process_count: int = 1, where: str = "config.batch_size") -> None:
    """The global batch must split evenly over the batch mesh axes and over the hosts that load it."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise ConfigError(f"{where}={batch_size!r}: must be a positive integer (the global batch size)")
    sizes = dict(zip(MESH_AXES, mesh_shape))
    axes = batch_axes(rules)
    shards = math.prod(sizes[a] for a in axes)
    if batch_size % shards:
        product = " * ".join(f"{a}={sizes[a]}" for a in axes)
        raise ConfigError(f"{where}={batch_size} is not divisible by {product} = {shards}, the batch shards of "
                          f"config.mesh.shape={tuple(mesh_shape)!r}")
    if batch_size % process_count:
        raise ConfigError(f"{where}={batch_size} is not divisible by the {process_count} processes that load it")


def logical_shardings(tree: Any, mesh: Mesh, rules: Rules = DEFAULT_RULES, strict: bool = False) -> Any:
    """NamedShardings for a (boxed, usually `jax.eval_shape`d) tree of params or train state.

    Leaves without logical names (step counters, plain arrays) are replicated.
    A logical name missing from `rules` is an error (a typo would otherwise
    replicate silently). A dimension the mesh axes do not divide evenly (a
    30522-token vocabulary over tensor=4) is replicated with a warning, or an
    error if `strict`.
    """
    used: dict[str, str] = {}

    def collect(kp, x):
        if isinstance(x, nn.LogicallyPartitioned):
            for name in x.names:
                if isinstance(name, str):
                    used.setdefault(name, jax.tree_util.keystr(kp))
    jax.tree_util.tree_map_with_path(collect, tree, is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata))
    known = {r[0] for r in rules}
    unknown = {n: p for n, p in used.items() if n not in known}
    if unknown:
        raise ConfigError(f"logical axis name(s) {sorted(unknown)} (e.g. on {next(iter(unknown.values()))}) have no "
                          f"partitioning rule; add them to config.mesh.rules (known: {sorted(known)})")

    shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(tree), mesh, list(rules))
    shapes = unbox_without_constraints(tree)

    def fit(kp, sharding, x):
        spec = list(sharding.spec)
        for dim, axes in enumerate(spec):
            n = math.prod(mesh.shape[a] for a in ((axes,) if isinstance(axes, str) else axes or ()))
            if x.shape[dim] % n:
                msg = (f"{jax.tree_util.keystr(kp)}: dimension {dim} (size {x.shape[dim]}) does not split over mesh "
                       f"axes {axes} ({n} shards)")
                if strict:
                    raise ConfigError(msg)
                logging.warning("%s; replicating that dimension instead", msg)
                spec[dim] = None
        return NamedSharding(mesh, PartitionSpec(*spec))

    return jax.tree_util.tree_map_with_path(fit, shardings, shapes)


def with_shardings(abstract: Any, shardings: Any) -> Any:
    """`jax.ShapeDtypeStruct`s carrying `shardings`: restore and jit-output targets."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        unbox_without_constraints(abstract), shardings)


def unbox_without_constraints(tree: Any) -> Any:
    """Strips logical-axis boxes. `nn.meta.unbox` would also apply sharding
    constraints when called under a mesh and rules, which abstract shapes
    outside a jit cannot take."""
    return jax.tree.map(lambda x: x.unbox(apply_constraint=False) if isinstance(x, nn.LogicallyPartitioned) else x,
                        tree, is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata))


def batch_sharding(mesh: Mesh, rules: Rules = DEFAULT_RULES) -> NamedSharding:
    """Leading (batch) dimension over the batch axes, everything else replicated; fits any rank >= 1."""
    return NamedSharding(mesh, PartitionSpec(batch_axes(rules) or None))


def make_global_batch(local_batch: Mapping[str, np.ndarray], mesh: Mesh,
                      rules: Rules = DEFAULT_RULES) -> dict[str, jax.Array]:
    """Global `jax.Array`s from this host's slice of the batch (hosts hold equal, disjoint slices)."""
    sharding = batch_sharding(mesh, rules)
    out = {}
    for name, x in local_batch.items():
        x = np.asarray(x)
        if x.ndim == 0:
            raise ValueError(f"batch[{name!r}] is a scalar; every batch entry needs a leading batch dimension")
        out[name] = jax.make_array_from_process_local_data(sharding, x)
    return out
