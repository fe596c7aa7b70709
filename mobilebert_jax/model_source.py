"""The one reader of models on disk: every stage that starts from a model reads it here.

A source (a config field such as `config.init_checkpoint` or `config.distill.teacher`) is one of
  - a trainer workdir (`WORKDIR/checkpoints/<step>/...`): its latest finished checkpoint;
  - one checkpoint step directory (`WORKDIR/checkpoints/<step>`);
  - a params directory, `config.json` + `params.safetensors` (convert/native.py);
  - an HF MobileBERT directory (`config.json` + model.safetensors / shards / pytorch_model.bin);
  - an HF hub id (`google/mobilebert-uncased`), fetched through `huggingface_hub` into its cache;
    with HF_HUB_OFFLINE=1 only the cache is read.
Only the parameters are read from a trainer checkpoint (not its optimizer state),
straight into the shardings the caller asks for. The encoder's layers are stored
unrolled (`layer_{i}`) in HF and params directories and as the run had them in a
checkpoint (stacked under `layers` with `scan_layers`, modeling/stacking.py); `read`
with a target returns the target's layout whichever the source holds, so a scanned
teacher can teach an unrolled student and a fine-tune can start from either.
Shapes are compared in the unrolled layout. Before anything is read, every
parameter's path and shape and every architecture field of the source's model
config can be compared with what the caller expects (`check_architecture`); a
mismatch is an error that names the parameter or the field. Each source also
carries the tokenizer record it was trained with, if it has one
(`data/tokenizer_record.py`).

    source = model_source.open_source("runs/distill", "config.init_checkpoint")
    params = model_source.read(source)                 # numpy, the source's own tree
    params = model_source.read(source, abstract)       # placed as `abstract` says
    params = model_source.read(source, stacked=False)  # numpy, the encoder's layers unrolled
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import json
import os
import re
from typing import Any, Iterator, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from flax import traverse_util

from mobilebert_jax import storage
from mobilebert_jax.errors import ConfigError
from mobilebert_jax.config import MobileBertConfig
from mobilebert_jax.convert.native import PARAMS_FILE
from mobilebert_jax.modeling import stacking
from mobilebert_jax.data import tokenizer_record

# Fields that change how a model is computed or stored but not what function it is.
NON_ARCHITECTURE_FIELDS = ("dtype", "remat", "scan_layers", "explicit_weight_gradients", "hidden_dropout_prob",
                           "attention_probs_dropout_prob", "classifier_dropout", "initializer_range")
_STATE, _CONFIG, _CHECKPOINTS = "state", "config", "checkpoints"
_HF_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
# spec -> Source, while an `opened_once` block is active (None outside one).
_OPENED: contextvars.ContextVar[Optional[dict]] = contextvars.ContextVar("opened_sources", default=None)
KINDS = "a trainer workdir, a checkpoint step directory, a params directory, an HF directory or an HF hub id"


@dataclasses.dataclass(frozen=True)
class Source:
    kind: str  # "checkpoint" | "params_dir" | "hf_dir"
    path: str  # the checkpoint step directory, the params directory or the HF directory (a hub cache snapshot)
    config: MobileBertConfig
    shapes: dict[str, tuple[int, ...]]  # "a/b/c" -> shape
    tokenizer: Optional[dict] = None  # the tokenizer record (data/tokenizer_record.py), None when it has none
    tokenizer_dir: Optional[str] = None  # where the record's file copy lies
    # An HF directory's tensors, already converted (they must be read to know the shapes).
    hf_values: Optional[dict] = dataclasses.field(default=None, repr=False, compare=False)


@contextlib.contextmanager
def opened_once() -> Iterator[None]:
    """Within the block each spec is opened once: a run's start (its stage's inherit, then read) shares them.

    Scoped, not global: a workdir's latest checkpoint moves on between two runs of one process (the pipeline).
    """
    token = _OPENED.set({})
    try:
        yield
    finally:
        _OPENED.reset(token)


def open_source(spec: str, where: str) -> Source:
    """What `spec` holds (`_open`), opened once per `opened_once` block."""
    opened = _OPENED.get()
    if opened is None:
        return _open(spec, where)
    if spec not in opened:
        opened[spec] = _open(spec, where)
    return opened[spec]


def _open(spec: str, where: str) -> Source:
    """Finds what `spec` holds and reads its model config and parameter shapes (the values only for HF)."""
    if not spec:
        raise ConfigError(f"{where} is empty; expected {KINDS}")
    storage.forget_listings(spec)  # another process may have written it since (a pipeline's stage, a pod's run)
    path = epath.Path(spec)
    if not path.exists():
        if not _HUB_ID.match(spec) or spec.startswith("."):
            raise ConfigError(f"{where}={spec!r}: no such directory (expected {KINDS})")
        path = epath.Path(_hub_snapshot(spec, where))
    if not path.is_dir():
        raise ConfigError(f"{where}={spec!r}: not a directory (expected {KINDS})")
    if (path / PARAMS_FILE).exists():
        return _params_dir(path, where)
    step_dir = _checkpoint_step_dir(path)
    if step_dir is not None:
        return _checkpoint(step_dir, where)
    if (path / "config.json").exists() and any((path / w).exists() for w in _HF_WEIGHTS):
        return _hf_dir(path, where)
    if (path / _CHECKPOINTS).is_dir():
        raise ConfigError(f"{where}={spec!r}: a trainer workdir without a finished checkpoint under {_CHECKPOINTS}/ "
                          f"(is the run still in its first steps?)")
    raise ConfigError(f"{where}={spec!r}: holds none of {KINDS} (found {sorted(p.name for p in path.iterdir())})")


def _hub_snapshot(repo_id: str, where: str) -> str:
    """The local snapshot of an HF hub model, downloaded into the HF cache unless HF_HUB_OFFLINE is set."""
    import huggingface_hub
    from huggingface_hub import errors

    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    try:
        return huggingface_hub.snapshot_download(
            repo_id, local_files_only=offline,
            allow_patterns=["config.json", "*.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                            "vocab.txt", "tokenizer*.json", "special_tokens_map.json"])
    except errors.LocalEntryNotFoundError:
        raise ConfigError(f"{where}={repo_id!r}: not a local directory, and the HF hub model {repo_id!r} is not in the "
                          f"HF cache ({huggingface_hub.constants.HF_HUB_CACHE})"
                          + (" while HF_HUB_OFFLINE is set" if offline else " and could not be downloaded")
                          + f"; download it where there is network (`hf download {repo_id}`) or pass a local "
                            f"directory (an HF directory, a params directory or a trainer workdir)") from None
    except (errors.RepositoryNotFoundError, errors.HfHubHTTPError, ValueError) as e:
        raise ConfigError(f"{where}={repo_id!r}: not a local directory, and not an HF hub model that can be "
                          f"fetched: {type(e).__name__}: {str(e).splitlines()[0]}") from None


def _tokenizer_of(model_dir: epath.Path) -> tuple[Optional[dict], Optional[str]]:
    record = tokenizer_record.read(model_dir)
    return (record, str(model_dir / tokenizer_record.DIRNAME)) if record is not None else (None, None)


def _params_dir(path: epath.Path, where: str) -> Source:
    from safetensors import safe_open

    try:
        config = MobileBertConfig.from_hf_json(str(path / "config.json"))
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    with safe_open(_local(path / PARAMS_FILE), framework="numpy") as f:
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    return Source("params_dir", str(path), config, shapes, *_tokenizer_of(path))


def _hf_dir(path: epath.Path, where: str) -> Source:
    from mobilebert_jax.convert.hf import CheckpointError, from_hf

    try:
        config, params = from_hf(str(path))
    except (CheckpointError, ConfigError) as e:
        raise type(e)(f"{where}: {e}") from None  # keeps the FATAL kind (checkpoint vs config)
    flat = {k: np.asarray(v) for k, v in traverse_util.flatten_dict(params, sep="/").items()}
    record = tokenizer_record.from_hf_dir(path)
    return Source("hf_dir", str(path), config, {k: v.shape for k, v in flat.items()}, record,
                  str(path) if record else None, hf_values=flat)


def _checkpoint_step_dir(path: epath.Path) -> Optional[epath.Path]:
    if (path / _STATE).is_dir():
        return path
    root = path / _CHECKPOINTS
    if not root.is_dir():
        return None
    # Locally orbax renames a step directory to its number once it is complete; on gs:// (no rename) the
    # directory exists while it is written and a commit marker finishes it: ask orbax which are finished.
    steps = [int(p.name) for p in root.iterdir()
             if p.name.isdigit() and (p / _STATE).is_dir() and ocp.step.is_checkpoint_finalized(p)]
    return root / str(max(steps)) if steps else None


def _checkpoint(step_dir: epath.Path, where: str) -> Source:
    config_file = step_dir / _CONFIG / "config.json"
    try:
        model = json.loads(config_file.read_text())["model"]
        config = MobileBertConfig.from_dict(model)
    except (OSError, KeyError, ValueError, TypeError) as e:
        raise ConfigError(f"{where}: cannot read the model config of checkpoint {step_dir} from {config_file}: "
                          f"{type(e).__name__}: {e}") from None
    metadata = ocp.PyTreeCheckpointHandler().metadata(_absolute(step_dir) / _STATE).tree
    if "params" not in metadata:
        raise ConfigError(f"{where}: checkpoint {step_dir} holds no 'params' in its train state")
    flat = traverse_util.flatten_dict(metadata["params"], sep="/")
    # The workdir keeps the tokenizer record next to checkpoints/.
    return Source("checkpoint", str(step_dir), config, {k: tuple(v.shape) for k, v in flat.items()},
                  *_tokenizer_of(step_dir.parent.parent))


def check_architecture(source: Source, expected: MobileBertConfig, expected_shapes: dict[str, tuple[int, ...]],
                       where: str, config_field: str) -> None:
    """Raises ConfigError naming each parameter (then each config field) where `source` differs.

    Compared in the unrolled layout: either side may stack its layers (`scan_layers`)."""
    problems = []
    have_shapes, want_shapes = stacking.unstacked_shapes(source.shapes), stacking.unstacked_shapes(expected_shapes)
    for name in sorted(set(want_shapes) | set(have_shapes)):
        have, want = have_shapes.get(name), want_shapes.get(name)
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


def read(source: Source, abstract_params: Any = None, stacked: Optional[bool] = None) -> Any:
    """The parameter values of `source`: placed as `abstract_params` (ShapeDtypeStructs with shardings) says,
    in its layout (stacked or unrolled layers), or, without it, the source's whole tree as float32 numpy
    arrays in the layout `stacked` asks for (None: as stored; a checkpoint of a `scan_layers` run is stacked)."""
    stored_stacked = stacking.is_stacked(source.shapes)
    if abstract_params is not None and stacking.is_stacked(abstract_params) != stored_stacked:
        # The other layout: read everything to the host, restack there, then place. Only a run that changes
        # `scan_layers` between stages pays this; the same layout restores straight into the shardings.
        params = read(source, stacked=not stored_stacked)
        return jax.tree.map(lambda x, a: jax.device_put(np.asarray(x, a.dtype), a.sharding), params, abstract_params)
    if abstract_params is None and stacked is not None and stacked != stored_stacked:
        return stacking.to_layout(read(source), stacked)
    if source.kind == "checkpoint":
        as_numpy = abstract_params is None
        if as_numpy:
            one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
            abstract_params = traverse_util.unflatten_dict(
                {k: jax.ShapeDtypeStruct(s, np.float32, sharding=one) for k, s in source.shapes.items()}, sep="/")
        item = {"params": abstract_params}
        restored = ocp.PyTreeCheckpointer().restore(
            _absolute(epath.Path(source.path)) / _STATE, args=ocp.args.PyTreeRestore(
                item=item, restore_args=ocp.checkpoint_utils.construct_restore_args(item), partial_restore=True))
        params = restored["params"]
        return jax.tree.map(np.asarray, params) if as_numpy else params
    if source.kind == "params_dir":
        from safetensors.numpy import load_file

        flat = load_file(_local(epath.Path(source.path) / PARAMS_FILE))
    else:
        flat = source.hf_values
    params = traverse_util.unflatten_dict(dict(flat), sep="/")
    if abstract_params is None:
        return jax.tree.map(lambda x: np.asarray(x, np.float32), params)
    return jax.tree.map(lambda x, a: jax.device_put(np.asarray(x, a.dtype), a.sharding), params, abstract_params)


def _absolute(path: epath.Path) -> epath.Path:
    return epath.Path(storage.absolute(path))


def _local(path: epath.Path) -> str:
    """safetensors reads local files only; a remote file is read from a local copy."""
    return storage.local_copy(path)
