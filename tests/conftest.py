"""Eight fake CPU devices for every test process: JAX fixes its device count when it first initializes."""

import jax

jax.config.update("jax_num_cpu_devices", 8)
