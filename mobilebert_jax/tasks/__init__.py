"""Fine-tuning tasks: GLUE and SQuAD readers, features, objectives, metrics and prediction files."""
