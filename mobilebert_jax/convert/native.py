"""This project's portable parameter directory: `config.json` + `params.safetensors`.

Parameter paths are joined with "/" as tensor names, so the file is readable
by any safetensors tool and needs no pickle. The trainer's orbax checkpoints
export to this format, and the converter reads and writes it.
"""

from __future__ import annotations

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from etils import epath
from safetensors.numpy import load, save

from mobilebert_jax.config import MobileBertConfig
from mobilebert_jax.convert.hf import CheckpointError, architecture_of

PARAMS_FILE = "params.safetensors"


def save_params(path: str, config: MobileBertConfig, params, architecture: str | None = None) -> str:
    params = nn.unbox(params)
    epath.Path(path).mkdir(parents=True, exist_ok=True)  # local or gs://
    flat = traverse_util.flatten_dict(params, sep="/")
    arrays = {k: np.ascontiguousarray(np.asarray(jax.device_get(v), np.float32)) for k, v in flat.items()}
    arch = architecture or architecture_of(params)
    epath.Path(path, PARAMS_FILE).write_bytes(save(arrays, metadata={"architecture": arch}))
    hf = config.to_hf_dict()
    hf["architectures"] = [arch]
    epath.Path(path, "config.json").write_text(json.dumps(hf, indent=2, sort_keys=True) + "\n")
    return path


def load_params(path: str) -> tuple[MobileBertConfig, dict]:
    weights = os.path.join(path, PARAMS_FILE)
    if not epath.Path(weights).is_file():
        raise CheckpointError(f"{path}: no {PARAMS_FILE}; expected a directory written by save_params")
    config = MobileBertConfig.from_hf_json(os.path.join(path, "config.json"))
    flat = load(epath.Path(weights).read_bytes())
    return config, jax.tree.map(jnp.asarray, traverse_util.unflatten_dict(flat, sep="/"))
