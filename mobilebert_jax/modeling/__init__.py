"""The MobileBERT / IB-BERT model family in Flax (linen, pure functional).

Array names end in their shape, one letter per axis (`x_BxTxH` is [batch, length, hidden]), as nanodo does. The
letters, here and in the losses (pretraining/objective.py, distill/losses.py):

  B  batch: sequences
  T  sequence length: token positions (queries, and keys in an attention map)
  P  masked positions scored per sequence (config.data.max_predictions_per_seq)
  C  choices of a multiple-choice example
  V  vocabulary (config.vocab_size)
  E  embedding width (config.embedding_size)
  H  inter-block hidden width (config.hidden_size): a layer's input and output, the features layer-wise
     transfer compares
  W  width inside a block (config.true_hidden_size: the intra-block bottleneck when there is one, else H)
  N  attention heads (config.num_attention_heads)
  K  width of one head (W / N)
  L  layers (config.num_hidden_layers)

A literal size is written as the number (`logits_Bx2`).
"""

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
