"""The MLM + NSP pretraining stage: the IB-BERT teacher, or a student from scratch (objective and stage)."""
