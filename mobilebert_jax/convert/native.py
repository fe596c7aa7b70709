"""This project's portable parameter directory: `config.json` + `params.safetensors`.

Parameter paths are joined with "/" as tensor names, so the file is readable
by any safetensors tool and needs no pickle; the encoder's layers are always
unrolled (`layer_{i}`, as in HF), whichever layout the model ran in
(`scan_layers`, modeling/stacking.py). The trainer's orbax checkpoints
export to this format (`python -m mobilebert_jax.convert from-run`);
`mobilebert_jax.model_source` reads it.
"""

from __future__ import annotations

import json

import flax.linen as nn
import jax
import numpy as np
from flax import traverse_util
from etils import epath
from safetensors.numpy import save

from mobilebert_jax.config import MobileBertConfig
from mobilebert_jax.convert.hf import architecture_of
from mobilebert_jax.modeling import stacking

PARAMS_FILE = "params.safetensors"


def save_params(path: str, config: MobileBertConfig, params, architecture: str | None = None) -> str:
    """Writes the directory; a scanned model's stacked layers are written unrolled (one layout on disk)."""
    params = stacking.unstack(nn.unbox(params))
    epath.Path(path).mkdir(parents=True, exist_ok=True)  # local or gs://
    flat = traverse_util.flatten_dict(params, sep="/")
    arrays = {k: np.ascontiguousarray(np.asarray(jax.device_get(v), np.float32)) for k, v in flat.items()}
    arch = architecture or architecture_of(params)
    epath.Path(path, PARAMS_FILE).write_bytes(save(arrays, metadata={"architecture": arch}))
    hf = config.to_hf_dict()
    hf["architectures"] = [arch]
    epath.Path(path, "config.json").write_text(json.dumps(hf, indent=2, sort_keys=True) + "\n")
    return path
