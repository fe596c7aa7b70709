"""Installs the TPU compiler for ahead-of-time compiles, out of the way of every other JAX process.

    python -m mobilebert_jax.tools.install_libtpu

Puts the libtpu this repository pins (REQUIREMENT, the same as setup.py's LIBTPU; within the range jax's
own `tpu` extra names) into `<venv>/aot-libtpu`, a folder
not on the import path: an importable libtpu makes every JAX process, CPU-only ones included,
try to start a TPU backend and take /tmp/libtpu_lockfile. `tools.aot_compile` finds it there
(or wherever TPU_LIBRARY_PATH points). Idempotent: does nothing when the right version is there.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys

from mobilebert_jax import cli

PRIVATE_DIR = os.path.join(sys.prefix, "aot-libtpu")
LIBRARY = os.path.join(PRIVATE_DIR, "libtpu", "libtpu.so")


# The libtpu the AOT figures in docs/scale_out.md were compiled with; setup.py's LIBTPU (a test keeps them equal).
REQUIREMENT = "libtpu==0.0.42.1"


def jax_requirement() -> str:
    """The libtpu requirement of the installed jax's `tpu` extra, e.g. 'libtpu==0.0.42.*'."""
    for req in importlib.metadata.requires("jax") or []:
        spec, _, marker = req.partition(";")
        if spec.strip().startswith("libtpu") and "tpu" in marker:
            return spec.strip().replace(" ", "")
    raise RuntimeError(f"jax {importlib.metadata.version('jax')} names no libtpu in its `tpu` extra")


def pinned_requirement() -> str:
    """REQUIREMENT, checked against what the installed jax accepts (another jax needs another libtpu)."""
    wanted, allowed = REQUIREMENT.split("==", 1)[1], jax_requirement().split("==", 1)[1]
    if not wanted.startswith(allowed.rstrip("*").rstrip(".")):
        raise RuntimeError(f"{REQUIREMENT} does not match jax {importlib.metadata.version('jax')}, which needs "
                           f"{jax_requirement()}: install the jax setup.py pins (pip install -e .)")
    return REQUIREMENT


def _installed_version() -> str | None:
    for name in os.listdir(PRIVATE_DIR) if os.path.isdir(PRIVATE_DIR) else []:  # not a user path: in the venv
        m = re.fullmatch(r"libtpu-(.+)\.dist-info", name)
        if m:
            return m.group(1)
    return None


def main(argv=None) -> int:
    cli.ArgumentParser(prog="python -m mobilebert_jax.tools.install_libtpu", description=__doc__).parse_args(argv)
    requirement = pinned_requirement()
    wanted = requirement.split("==", 1)[1]
    installed = _installed_version()
    if installed == wanted and os.path.isfile(LIBRARY):  # not a user path: in the venv
        print(f"libtpu {installed} already in {PRIVATE_DIR}")
        return 0
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--upgrade", "--target", PRIVATE_DIR,
                    requirement], check=True)
    print(f"installed {requirement} into {PRIVATE_DIR} (not importable; used through TPU_LIBRARY_PATH)")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run_argparse(main))
