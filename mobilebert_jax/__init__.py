"""mobilebert-jax: the MobileBERT / IB-BERT family in JAX/Flax."""

from mobilebert_jax.errors import ConfigError
from mobilebert_jax.config import MobileBertConfig, get_preset
from mobilebert_jax import storage  # noqa: F401  (sets how gs:// is opened before any path is used)

__all__ = ["ConfigError", "MobileBertConfig", "get_preset"]
__version__ = "0.1.0"
