"""The MobileBERT / IB-BERT model family in Flax (linen, pure functional)."""

from mobilebert_jax.modeling.encoder import MobileBertModel
from mobilebert_jax.modeling.heads import (
    MobileBertForMaskedLM,
    MobileBertForMultipleChoice,
    MobileBertForPreTraining,
    MobileBertForQuestionAnswering,
    MobileBertForSequenceClassification,
    MobileBertForTokenClassification,
    gather_positions,
)

__all__ = [
    "MobileBertModel",
    "MobileBertForMaskedLM",
    "MobileBertForMultipleChoice",
    "MobileBertForPreTraining",
    "MobileBertForQuestionAnswering",
    "MobileBertForSequenceClassification",
    "MobileBertForTokenClassification",
    "gather_positions",
]
