"""Eight fake CPU devices for every test process: JAX fixes its device count when it first initializes."""

import jax

jax.config.update("jax_num_cpu_devices", 8)


def pytest_configure(config):
    # Heavy end-to-end cases; the default run includes them, `-m "not slow"` leaves them out, `-m slow` runs only them.
    config.addinivalue_line("markers", "slow: heavy end-to-end test (minutes on 2 cores)")
