"""The loader reading prepared gs:// shards where they lie, on the local Cloud Storage emulator.

    python benchmarks/gcs_loader.py [--shared_data=../shared/data] [--batches=20] [--hosts=32,64]

Prepares the full configuration's shape (512 tokens, 20 predictions; WikiText-2 test with the MobileBERT
vocabulary when the shared data is there, else the embedded corpus) into 8 local shards, uploads them to
fake-gcs-server on 127.0.0.1 (the tests' emulator, tests/gcs_emulator.py), and for each host count reads host 0's
share of global batches of 4,096 through `make_pretraining_loader` (the experiments' loader_threads and
prefetch_buffer_size), with ArrayRecord's Cloud Storage client going through a counting proxy. Prints:

- the bytes and requests a start costs before the first batch (each shard's index),
- sequences/s of host 0 after a warm-up, from gs:// and from the same shards on local disk,
- the bytes the emulator sent per record read and the records' own mean size (ranged reads are open-ended:
  the reader hangs up once it has its record; on loopback the socket buffers decide how much was sent by then),
- what a shard's index costs per record (a shard of many small records opened through the proxy).
"""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import sys
import tempfile
import time

from absl import flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))  # the emulator and the counting proxy the tests use

FLAGS = flags.FLAGS
flags.DEFINE_string("shared_data", os.path.join(ROOT, "..", "shared", "data"), "the shared real data")
flags.DEFINE_integer("batches", 20, "timed global batches per host count")
flags.DEFINE_list("hosts", ["32", "64"], "host counts sharing the global batch of 4,096")


def start_emulator():
    import gcs_emulator as emulator
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([emulator._binary(), "-backend", "memory", "-scheme", "http", "-host", "127.0.0.1",
                             "-port", str(port), "-external-url", url, "-public-host", f"127.0.0.1:{port}",
                             "-log-level", "error"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    emulator._start_bucket(url, proc, os.devnull)
    os.environ.update(STORAGE_EMULATOR_HOST=url, GOOGLE_CLOUD_PROJECT="test")
    return proc, url, emulator


def read_rate(config, hosts: int, batches: int) -> tuple[float, int]:
    """(host 0's sequences/s after 2 warm-up batches, records read in all)."""
    from mobilebert_jax.data.loader import make_pretraining_loader
    loader = make_pretraining_loader(config, split="train", global_batch_size=4096, process_index=0,
                                     process_count=hosts, seed=0)
    for _ in range(2):
        next(loader)
    start = time.perf_counter()
    for _ in range(batches):
        next(loader)
    seconds = time.perf_counter() - start
    return batches * 4096 // hosts / seconds, (batches + 2) * 4096 // hosts


def index_bytes_per_record(emulator, url: str, tmp: str) -> float:
    """Opens a shard of 200,000 small records through the proxy: what its index costs per record."""
    import gcsfs
    from array_record.python import array_record_module
    local = os.path.join(tmp, "many.array_record")
    writer = array_record_module.ArrayRecordWriter(local, "group_size:1")
    for i in range(200_000):
        writer.write(i.to_bytes(8, "little"))
    writer.close()
    gcsfs.GCSFileSystem().put(local, "mobilebert-test/many.array_record")
    counter = emulator.DownloadCounter(url)
    os.environ["CLOUD_STORAGE_EMULATOR_ENDPOINT"] = counter.url
    try:
        reader = array_record_module.ArrayRecordReader("gs://mobilebert-test/many.array_record",
                                                       "readahead_buffer_size:0")
        assert reader.num_records() == 200_000
        reader.close()
    finally:
        counter.close()
    data_bytes = 200_000 * 8
    print(f"index: opening a shard of 200,000 records of 8 bytes ({os.path.getsize(local):,} bytes) downloaded "
          f"{counter.downloaded():,} bytes in {sum(counter.requests.values())} requests")
    return (os.path.getsize(local) - data_bytes) / 200_000


def main(argv) -> None:
    del argv
    import gcsfs

    from mobilebert_jax.data.prepare import prepare
    from mobilebert_jax.experiment_config import load_module

    common = load_module(os.path.join(ROOT, "experiments", "common.py"))
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}")
    proc, url, emulator = start_emulator()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            os.environ["MOBILEBERT_JAX_SCRATCH"] = os.path.join(tmp, "scratch")
            full = common.pretraining_data(max_seq_length=512, max_predictions_per_seq=20)
            common.embedded_corpus(full)
            shared = os.path.abspath(FLAGS.shared_data)
            if os.path.isfile(os.path.join(shared, "corpus", "wikitext-2-raw-test.txt")):
                full.corpus = os.path.join(shared, "corpus", "wikitext-2-raw-test.txt")
                full.corpus_format = "wikitext"
                full.tokenizer = os.path.join(shared, "vocab", "bert-uncased-vocab.txt")
            full.num_shards = 8
            full.prepared_dir = os.path.join(tmp, "full")
            manifest = prepare(full, full.prepared_dir)
            train = manifest["splits"]["train"]
            shard_bytes = sum(train["files"][n]["bytes"] for n in train["shards"])
            print(f"data: {full.corpus}, {train['instances']:,} train instances in {len(train['shards'])} shards, "
                  f"{shard_bytes:,} bytes ({shard_bytes / train['instances']:,.0f} bytes and "
                  f"{train['tokens'] / train['instances']:,.0f} tokens per record)")
            gcsfs.GCSFileSystem().put(full.prepared_dir, "mobilebert-test/full", recursive=True)
            remote = full.copy_and_resolve_references()
            remote.prepared_dir = "gs://mobilebert-test/full"
            print(f"loader_threads={full.loader_threads}, prefetch_buffer_size={full.prefetch_buffer_size}, "
                  f"global batch 4,096 x 512")
            for hosts in map(int, FLAGS.hosts):
                counter = emulator.DownloadCounter(url)
                os.environ["CLOUD_STORAGE_EMULATOR_ENDPOINT"] = counter.url
                try:
                    from mobilebert_jax.data.loader import make_pretraining_dataset
                    make_pretraining_dataset(remote, split="train", global_batch_size=4096, process_index=0,
                                             process_count=hosts, seed=0)
                    opened, opened_requests = counter.downloaded(), sum(counter.requests.values())
                    counter.bytes.clear()
                    counter.requests.clear()
                    gcs_rate, records = read_rate(remote, hosts, FLAGS.batches)
                    sent, requests = counter.downloaded(), sum(counter.requests.values())
                finally:
                    counter.close()
                local_rate, _ = read_rate(full, hosts, FLAGS.batches)
                print(f"{hosts} hosts (host share {4096 // hosts}): start {opened:,} bytes in {opened_requests} "
                      f"requests; gs:// {gcs_rate:,.0f} sequences/s, local disk {local_rate:,.0f} sequences/s; "
                      f"{requests:,} ranged reads (the loader's {records:,} records and its prefetch), "
                      f"{sent / max(requests, 1):,.0f} bytes sent per read")
            print(f"index: {index_bytes_per_record(emulator, url, tmp):.1f} bytes per record in the file")
    finally:
        proc.terminate()
        proc.wait()


if __name__ == "__main__":
    from mobilebert_jax import cli

    cli.run_absl(main)
