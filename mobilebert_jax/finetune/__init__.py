"""Fine-tuning: GLUE and SQuAD readers, features, objectives, metrics, prediction files, the fine-tuning stages and evaluation of their runs."""
