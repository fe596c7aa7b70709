"""Parameter trees from disk, checked against the architecture the config expects.

A source is one of
  - a trainer workdir (`WORKDIR/checkpoints/<step>/...`): its latest finished checkpoint;
  - one checkpoint step directory (`WORKDIR/checkpoints/<step>`);
  - a params directory, `config.json` + `params.safetensors` (convert/native.py: exported
    or imported checkpoints, HF models converted with `python -m mobilebert_jax.convert`).
Only the parameters are read from a trainer checkpoint (not its optimizer
state), straight into the shardings the caller asks for. Before anything
is read, every parameter's path and shape and every architecture field of the
source's model config are compared with what the config expects; a mismatch
is an error that names the parameter or the field.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import traverse_util

from mobilebert_jax import storage
from mobilebert_jax.config import ConfigError, MobileBertConfig
from mobilebert_jax.convert import native

# Fields that change how a model is computed or stored but not what function it is.
NON_ARCHITECTURE_FIELDS = ("dtype", "remat", "hidden_dropout_prob", "attention_probs_dropout_prob",
                           "classifier_dropout", "initializer_range")
_STATE, _CONFIG, _CHECKPOINTS = "state", "config", "checkpoints"


@dataclasses.dataclass(frozen=True)
class Source:
    kind: str  # "params_dir" | "checkpoint"
    path: str  # the params directory, or the checkpoint step directory
    config: MobileBertConfig
    shapes: dict[str, tuple[int, ...]]  # "a/b/c" -> shape


def open_source(path: str, where: str) -> Source:
    """Finds what `path` holds and reads its model config and parameter shapes (not the values)."""
    if not path:
        raise ConfigError(f"{where} is empty; expected a trainer workdir, a checkpoint step directory or a params "
                          f"directory")
    if storage.path(path, native.PARAMS_FILE).is_file():
        return _params_dir(path, where)
    step_dir = _checkpoint_step_dir(path)
    if step_dir is None:
        raise ConfigError(f"{where}={path!r}: not a params directory ({native.PARAMS_FILE} + config.json), a trainer "
                          f"workdir with finished checkpoints under {_CHECKPOINTS}/, or a checkpoint step directory")
    return _checkpoint(step_dir, where)


def _params_dir(path: str, where: str) -> Source:
    from safetensors import safe_open

    try:
        config = MobileBertConfig.from_hf_json(os.path.join(path, "config.json"))
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    with safe_open(storage.local_copy(os.path.join(path, native.PARAMS_FILE)), framework="numpy") as f:
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    return Source("params_dir", path, config, shapes)


def _checkpoint_step_dir(path: str) -> str | None:
    if storage.path(path, _STATE).is_dir():
        return path
    root = storage.path(path, _CHECKPOINTS)
    if not root.is_dir():
        return None
    # Locally orbax renames a step directory to its number once it is complete; on gs:// (no rename) the
    # directory exists while it is written and a commit marker finishes it: ask orbax which are finished.
    steps = [int(p.name) for p in root.iterdir()
             if p.name.isdigit() and (p / _STATE).is_dir() and ocp.step.is_checkpoint_finalized(p)]
    return os.path.join(root, str(max(steps))) if steps else None


def _checkpoint(step_dir: str, where: str) -> Source:
    config_file = os.path.join(step_dir, _CONFIG, "config.json")
    try:
        model = json.loads(storage.path(config_file).read_text())["model"]
        config = MobileBertConfig.from_dict(model)
    except (OSError, KeyError, ValueError, TypeError) as e:
        raise ConfigError(f"{where}: cannot read the model config of checkpoint {step_dir} from {config_file}: "
                          f"{type(e).__name__}: {e}") from None
    metadata = ocp.PyTreeCheckpointHandler().metadata(storage.path(storage.absolute(step_dir)) / _STATE).tree
    if "params" not in metadata:
        raise ConfigError(f"{where}: checkpoint {step_dir} holds no 'params' in its train state")
    flat = traverse_util.flatten_dict(metadata["params"], sep="/")
    return Source("checkpoint", step_dir, config, {k: tuple(v.shape) for k, v in flat.items()})


def check_architecture(source: Source, expected: MobileBertConfig, expected_shapes: dict[str, tuple[int, ...]],
                       where: str, config_field: str) -> None:
    """Raises ConfigError naming each parameter (then each config field) where `source` differs."""
    problems = []
    for name in sorted(set(expected_shapes) | set(source.shapes)):
        have, want = source.shapes.get(name), expected_shapes.get(name)
        if have is None:
            problems.append(f"parameter {name!r} is missing from the checkpoint ({config_field} expects shape {want})")
        elif want is None:
            problems.append(f"parameter {name!r} (shape {have}) is in the checkpoint but not in the model "
                            f"{config_field} describes")
        elif have != want:
            problems.append(f"parameter {name!r} has shape {have} in the checkpoint, but {config_field} expects {want}")
    if not problems:
        for f in dataclasses.fields(MobileBertConfig):
            if f.name in NON_ARCHITECTURE_FIELDS:
                continue
            have, want = getattr(source.config, f.name), getattr(expected, f.name)
            if have != want:
                problems.append(f"the checkpoint's model has {f.name}={have!r}, but {config_field}.{f.name}={want!r}")
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise ConfigError(f"{where}={source.path!r} does not match {config_field}: " + "; ".join(problems[:5]) + more)


def flat_shapes(abstract_params: Any) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in traverse_util.flatten_dict(abstract_params, sep="/").items()}


def load_params(source: Source, abstract_params: Any) -> Any:
    """The parameter values of `source`, placed as `abstract_params` (ShapeDtypeStructs with shardings) says."""
    if source.kind == "params_dir":
        from safetensors.numpy import load_file

        flat = load_file(storage.local_copy(os.path.join(source.path, native.PARAMS_FILE)))
        params = traverse_util.unflatten_dict(flat, sep="/")
        return jax.tree.map(lambda x, a: jax.device_put(np.asarray(x, a.dtype), a.sharding), params, abstract_params)
    state_dir = storage.path(storage.absolute(source.path), _STATE)
    item = {"params": abstract_params}
    restored = ocp.PyTreeCheckpointer().restore(state_dir, args=ocp.args.PyTreeRestore(
        item=item, restore_args=ocp.checkpoint_utils.construct_restore_args(item), partial_restore=True))
    return restored["params"]


def read_params(path: str, expected: MobileBertConfig, abstract_params: Any, where: str, config_field: str) -> Any:
    """Checks the source at `path` against `expected` and returns its parameters placed like `abstract_params`."""
    source = open_source(path, where)
    check_architecture(source, expected, flat_shapes(abstract_params), where, config_field)
    return load_params(source, abstract_params)
