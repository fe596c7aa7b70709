"""Checkpoint conversion: HF MobileBERT directories <-> this project's parameters.

    config, params = from_hf("google-mobilebert-uncased/")
    to_hf(config, params, "exported/")  # transformers.MobileBertForPreTraining.from_pretrained("exported/")

Command line: `python -m mobilebert_jax.convert {from-hf,to-hf} --input ... --output ...`.
"""

from mobilebert_jax.convert.hf import ARCHITECTURES, CheckpointError, from_hf, to_hf
from mobilebert_jax.convert.native import load_params, save_params
from mobilebert_jax.convert.torch_bin import UnsafeCheckpointError, load_torch_bin

__all__ = ["ARCHITECTURES", "CheckpointError", "UnsafeCheckpointError", "from_hf", "to_hf", "load_params",
           "save_params", "load_torch_bin"]
