"""Reads a PyTorch `pytorch_model.bin` into NumPy without executing pickled code.

`torch.save` writes a zip holding `data.pkl` (a pickle that names tensor
rebuild functions) and one raw file per storage. A pickle may name any
global, so instead of `torch.load` we unpickle with an allow-list: the tensor
rebuild functions, storage types and OrderedDict, each mapped to a NumPy
stand-in. Anything else is refused with the name of the offending global.
No torch import is needed.
"""

from __future__ import annotations

import collections
import pickle
import zipfile

import ml_dtypes
import numpy as np

from mobilebert_jax import storage
from mobilebert_jax.errors import CheckpointError

_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class UnsafeCheckpointError(CheckpointError, pickle.UnpicklingError):
    """The checkpoint's pickle names something other than tensors."""


class _StorageType:
    def __init__(self, name: str):
        self.dtype = np.dtype(_STORAGE_DTYPES[name])


def _rebuild_tensor(storage: np.ndarray, offset: int, size, stride, *_unused):
    if not size:
        return storage[offset:offset + 1].reshape(()).copy()
    item = storage.itemsize
    return np.lib.stride_tricks.as_strided(
        storage[offset:], shape=tuple(size), strides=tuple(s * item for s in stride)).copy()


def _rebuild_parameter(data, *_unused):
    return data


_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
}


class _Unpickler(pickle.Unpickler):
    def __init__(self, f, archive: zipfile.ZipFile, prefix: str, path: str):
        super().__init__(f)
        self._archive, self._prefix, self._path = archive, prefix, path
        self._storages: dict[str, np.ndarray] = {}

    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise UnsafeCheckpointError(
            f"{self._path}: refusing to load global {module}.{name}; a weights file should hold only tensors")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise UnsafeCheckpointError(f"{self._path}: unexpected persistent id {pid!r}")
        _, storage_type, key, _location, _numel = pid
        if not isinstance(storage_type, _StorageType):
            raise UnsafeCheckpointError(f"{self._path}: unknown storage type {storage_type!r}")
        if key not in self._storages:
            raw = self._archive.read(f"{self._prefix}data/{key}")
            self._storages[key] = np.frombuffer(raw, dtype=storage_type.dtype)
        return self._storages[key]


def load_torch_bin(path: str) -> dict[str, np.ndarray]:
    """Tensor name -> array for a `torch.save`d state dict (zip format)."""
    with storage.open(path, "rb") as file:
        return _load(path, file)


def _load(path: str, file) -> dict[str, np.ndarray]:
    if not zipfile.is_zipfile(file):
        raise CheckpointError(f"{path}: not a zip-format PyTorch file (the legacy pre-1.6 format is not supported; "
                         "re-save it with a recent torch or convert it to safetensors)")
    with zipfile.ZipFile(file) as archive:
        pickles = [n for n in archive.namelist() if n.endswith("data.pkl")]
        if len(pickles) != 1:
            raise CheckpointError(f"{path}: expected one data.pkl inside the archive, found {len(pickles)}")
        prefix = pickles[0][: -len("data.pkl")]
        with archive.open(pickles[0]) as f:
            state = _Unpickler(f, archive, prefix, path).load()
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict, found {type(state).__name__}")
    return {k: np.asarray(v) for k, v in state.items()}
