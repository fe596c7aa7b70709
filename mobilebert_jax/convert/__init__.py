"""Checkpoint conversion: HF MobileBERT directories <-> this project's parameters.

    config, params = from_hf("google-mobilebert-uncased/")
    to_hf(config, params, "exported/")  # transformers.MobileBertForPreTraining.from_pretrained("exported/")

Command line: `python -m mobilebert_jax.convert {from-hf,from-run,from-tf,to-hf} --input ... --output ...`
(from-tf: the original TF1 and Model Garden TF2 checkpoints, `convert/tf_checkpoint.py`).
Reading any model from disk: `mobilebert_jax.model_source`.
"""

from mobilebert_jax.convert.hf import ARCHITECTURES, CheckpointError, from_hf, to_hf
from mobilebert_jax.convert.native import save_params
from mobilebert_jax.convert.torch_bin import UnsafeCheckpointError, load_torch_bin

__all__ = ["ARCHITECTURES", "CheckpointError", "UnsafeCheckpointError", "from_hf", "to_hf", "save_params", "load_torch_bin"]
