"""The one exception type of the data pipeline (defined with the project's other error types)."""

from mobilebert_jax.errors import DataError

__all__ = ["DataError"]
