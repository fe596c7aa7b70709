"""The training engine: the Objective and Stage contracts, the sharded train/eval steps and the loop that runs a stage."""
