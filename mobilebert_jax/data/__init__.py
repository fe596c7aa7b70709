"""Pretraining data: tokenizers, corpus sources, BERT instances, preparation to ArrayRecord, the grain loader.

`prepare` is imported from its module (mobilebert_jax.data.prepare), not here: importing it with the package made
`python -m mobilebert_jax.data.prepare` load the module twice (runpy's RuntimeWarning).
"""

from mobilebert_jax.data.loader import make_pretraining_dataset, make_pretraining_loader
from mobilebert_jax.data.manifest import load_manifest
from mobilebert_jax.data.tokenizers import Tokenizer, load_tokenizer
from mobilebert_jax.errors import DataError

__all__ = ["DataError", "Tokenizer", "load_manifest", "load_tokenizer",
           "make_pretraining_dataset", "make_pretraining_loader"]
