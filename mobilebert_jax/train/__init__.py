"""Training: losses, the sharded train step, and the loop that runs a stage."""
