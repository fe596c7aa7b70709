"""A Cloud Storage JSON API on 127.0.0.1 for tests: the `gcp-storage-emulator` package, in its own process.

`gcs` (a pytest fixture, one emulator per test session) starts it with an
in-memory store and one bucket, and points every client at it through the
environment, which subprocesses inherit:
  STORAGE_EMULATOR_HOST          gcsfs (etils.epath's gs:// backend) and google-cloud-storage (tensorboardX)
  TENSORSTORE_GCS_HTTP_URL,
  GOOGLE_AUTH_TOKEN_FOR_TESTING  tensorstore (orbax's array storage)
The emulator serves everything orbax, tensorstore (OCDBT), gcsfs and
tensorboardX call in these tests: object media/multipart/resumable uploads,
ranged reads, listing with prefixes and delimiters, deletes, and
`ifGenerationMatch` preconditions.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

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


def _wait_ready(url: str, proc: subprocess.Popen, log_path: str) -> None:
    for _ in range(600):  # bounded by attempts, not by a wall-clock figure
        if proc.poll() is not None:
            raise RuntimeError(f"the storage emulator exited ({proc.returncode}): {open(log_path).read()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{url}/storage/v1/b/{BUCKET}", timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"the storage emulator at {url} did not answer: {open(log_path).read()[-2000:]}")


@pytest.fixture(scope="session")
def gcs(tmp_path_factory):
    pytest.importorskip("gcsfs", reason="the gcs extra is not installed (pip install -e '.[gcs]')")
    pytest.importorskip("gcp_storage_emulator", reason="gcp-storage-emulator is not installed (the test extra)")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = str(tmp_path_factory.mktemp("gcs_emulator") / "emulator.log")
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "gcp_storage_emulator", "start", "--host", "127.0.0.1",
                                 "--port", str(port), "--in-memory", "--default-bucket", BUCKET, "--quiet"],
                                stdout=log, stderr=subprocess.STDOUT)
    saved = {k: os.environ.get(k) for k in ("STORAGE_EMULATOR_HOST", "TENSORSTORE_GCS_HTTP_URL",
                                            "GOOGLE_AUTH_TOKEN_FOR_TESTING", "GOOGLE_CLOUD_PROJECT")}
    try:
        _wait_ready(url, proc, log_path)
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
        proc.wait(timeout=30)
