"""Starting JAX's distributed runtime: explicit on CPU/GPU clusters, automatic on Cloud TPU VMs.

`initialize` must run before anything touches a JAX backend (`jax.devices()`,
any computation). Where the settings come from, first match wins:

  1. arguments (main's --coordinator_address, --num_processes, --process_id),
     all three together;
  2. the environment: JAX_COORDINATOR_ADDRESS (JAX's own name for it),
     JAX_NUM_PROCESSES and JAX_PROCESS_ID, for launchers that give each
     process its own environment (the simulated pod of tests/fake_gcloud,
     schedulers);
  3. a Cloud TPU VM (a Google accelerator on the PCI bus): no arguments,
     JAX reads the worker list and this worker's index from the TPU metadata
     server. Single-host VMs are initialized too, which starts the preemption
     service there as well;
  4. otherwise one process, and nothing to do.

After initialization every process sees all devices of the job, loads its
own share of the data (`jax.process_index()`), and the trainer assembles
global batches with `partitioning.make_global_batch`. On CPU the
cross-process collectives use gloo (JAX's default); set the number of CPU
devices per process with JAX_NUM_CPU_DEVICES.
"""

from __future__ import annotations

import glob  # not a user path: /sys device files only
import os
from typing import Optional

import jax

from mobilebert_jax.errors import ConfigError

ENV_ADDRESS, ENV_COUNT, ENV_INDEX = "JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"
_GOOGLE_PCI_VENDOR = "0x1ae0"


def on_cloud_tpu_vm() -> bool:
    """Whether a Google accelerator (a TPU chip) sits on this machine's PCI bus (JAX's own test on TPU VMs)."""
    for vendor_file in glob.glob("/sys/bus/pci/devices/*/vendor"):  # not a user path: the kernel's device list
        try:
            with open(vendor_file) as f:  # not a user path: a /sys device file
                if f.read().strip() == _GOOGLE_PCI_VENDOR:
                    return True
        except OSError:
            continue
    return False


def _int_setting(value: Optional[int], env: str, flag: str) -> Optional[int]:
    if value is not None:
        return value
    raw = os.environ.get(env)
    if raw is None or raw == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"environment variable {env}={raw!r} (for --{flag}) is not an integer") from None


def initialize(coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
               process_id: Optional[int] = None) -> str:
    """Initializes the distributed runtime if this is a multi-process job; returns how (for the log)."""
    address = coordinator_address or os.environ.get(ENV_ADDRESS) or None
    count = _int_setting(num_processes, ENV_COUNT, "num_processes")
    index = _int_setting(process_id, ENV_INDEX, "process_id")
    given = {"coordinator_address": address, "num_processes": count, "process_id": index}
    if any(v is not None for v in given.values()):
        missing = [f"--{k} (or {env})" for (k, v), env in zip(given.items(), (ENV_ADDRESS, ENV_COUNT, ENV_INDEX))
                   if v is None]
        if missing:
            raise ConfigError(f"a multi-process run needs all of --coordinator_address, --num_processes and "
                              f"--process_id; missing {', '.join(missing)}")
        if count < 1 or not 0 <= index < count:
            raise ConfigError(f"--process_id={index} must be in [0, --num_processes={count})")
        if ":" not in address:
            raise ConfigError(f"--coordinator_address={address!r} must be host:port (process 0's host)")
        jax.distributed.initialize(address, count, index)
        return f"process {index} of {count}, coordinator {address}"
    if on_cloud_tpu_vm():
        jax.distributed.initialize()
        return f"Cloud TPU VM: process {jax.process_index()} of {jax.process_count()} (from the TPU metadata)"
    return "single process"
