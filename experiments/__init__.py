"""One ml-collections config per stage (each docstring gives its command); installed as mobilebert_jax.experiments."""
