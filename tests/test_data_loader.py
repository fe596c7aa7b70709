"""The grain loader: determinism, hosts' shares, resume in a new process, orbax checkpoints, epochs."""

from __future__ import annotations

import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import grain
import numpy as np
import pytest

from mobilebert_jax.data.loader import make_pretraining_loader
from mobilebert_jax.data.manifest import load_manifest
from mobilebert_jax.data.masking import FEATURE_DTYPES
from mobilebert_jax.data.prepare import prepare
from mobilebert_jax.errors import DataError
from tests.data_fixtures import data_config
from limits import HANG_S

from gcs_emulator import DownloadCounter, gcs  # noqa: F401  (the fixture)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """The builtin corpus at 64 tokens: no download, no shared data needed."""
    out = str(tmp_path_factory.mktemp("builtin64"))
    config = data_config(max_seq_length=64, max_predictions_per_seq=10, held_out_fraction=0.02, prepared_dir=out)
    prepare(config, out)
    return config


def _loader(config, *, batch=16, host=0, hosts=1, seed=1, **kw):
    return make_pretraining_loader(config, split=kw.pop("split", "train"), global_batch_size=batch,
                                   process_index=host, process_count=hosts, seed=seed, **kw)


def _take(iterator, n):
    return [next(iterator) for _ in range(n)]


def _assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_batches_have_the_trainer_layout(prepared):
    batch = next(_loader(prepared, batch=16))
    shapes = {k: (v.shape, v.dtype) for k, v in batch.items()}
    assert shapes == {
        "input_ids": ((16, 64), np.int32), "input_mask": ((16, 64), np.int32), "segment_ids": ((16, 64), np.int32),
        "masked_lm_positions": ((16, 10), np.int32), "masked_lm_ids": ((16, 10), np.int32),
        "masked_lm_weights": ((16, 10), np.float32), "next_sentence_labels": ((16,), np.int32)}
    assert set(batch) == set(FEATURE_DTYPES)


def test_same_seed_same_batches_other_seed_other_batches(prepared):
    a, b = _take(_loader(prepared), 5), _take(_loader(prepared), 5)
    _assert_same(a, b)
    c = _take(_loader(prepared, seed=2), 5)
    assert not np.array_equal(a[0]["input_ids"], c[0]["input_ids"])


@pytest.mark.parametrize("hosts", [2, 4])
def test_hosts_together_yield_the_one_host_batch(prepared, hosts):
    steps = _instances(prepared, "train") // 48 + 2  # runs past the end of the first epoch
    whole = _take(_loader(prepared, batch=48), steps)
    parts = [_take(_loader(prepared, batch=48, host=h, hosts=hosts), steps) for h in range(hosts)]
    for t in range(steps):
        for k in whole[t]:
            assert parts[0][t][k].shape[0] == 48 // hosts
            np.testing.assert_array_equal(np.concatenate([p[t][k] for p in parts]), whole[t][k], err_msg=k)


def test_bad_host_layouts_are_refused(prepared):
    with pytest.raises(DataError, match="global_batch_size 10 must be a positive multiple of process_count 4"):
        _loader(prepared, batch=10, hosts=4)
    with pytest.raises(DataError, match=r"process_index 2 is not in \[0, process_count=2\)"):
        _loader(prepared, batch=10, host=2, hosts=2)
    with pytest.raises(DataError, match="split must be one of"):
        _loader(prepared, split="test")


def test_epochs_visit_every_example_once_and_end(prepared):
    n = _instances(prepared, "train")
    batches = list(_loader(prepared, batch=8, num_epochs=1, pad_final_batch=True))
    assert len(batches) == -(-n // 8)
    rows = np.concatenate([b["input_ids"] for b in batches])
    real = np.concatenate([b["input_mask"][:, 0] for b in batches]) == 1
    assert real.sum() == n and not real[n:].any()
    unmasked = np.concatenate([_unmasked(b) for b in batches])[real]
    again = np.concatenate([_unmasked(b) for b in _take(_loader(prepared, batch=8, seed=9), -(-n // 8))])[:n]
    # Another seed: another order and other masks, the same examples.
    assert sorted(map(bytes, unmasked)) == sorted(map(bytes, again))
    assert not np.array_equal(unmasked, again)
    dropped = list(_loader(prepared, batch=8, num_epochs=2))
    assert len(dropped) == 2 * n // 8
    assert rows.shape[1] == 64


def _instances(data_cfg, split):
    """A prepared split's size, from its manifest (what the loader reads)."""
    return int(load_manifest(data_cfg.prepared_dir)["splits"][split]["instances"])


def _unmasked(batch):
    ids = batch["input_ids"].copy()
    rows, cols = np.nonzero(batch["masked_lm_weights"])
    ids[rows, batch["masked_lm_positions"][rows, cols]] = batch["masked_lm_ids"][rows, cols]
    return ids


def test_too_small_split_for_one_batch_is_a_clear_error(prepared):
    n = _instances(prepared, "eval")
    with pytest.raises(DataError, match=f"the eval split has {n} instances"):
        _loader(prepared, split="eval", batch=4 * n, num_epochs=1)


RESUME_SCRIPT = textwrap.dedent("""
    import json, pickle, sys
    import numpy as np
    import ml_collections
    from mobilebert_jax.data.loader import make_pretraining_loader
    config = ml_collections.ConfigDict(json.loads(open(sys.argv[1]).read()))
    loader = make_pretraining_loader(config, split="train", global_batch_size=16, process_index=int(sys.argv[2]),
                                     process_count=2, seed=5)
    loader.set_state(pickle.loads(open(sys.argv[3], "rb").read()))
    batches = [next(loader) for _ in range(int(sys.argv[4]))]
    np.savez(sys.argv[5], **{f"{i}/{k}": v for i, b in enumerate(batches) for k, v in b.items()})
""")


def test_restored_in_a_new_process_the_loader_continues_exactly(prepared, tmp_path):
    k, m = 7, 4
    uninterrupted = _take(_loader(prepared, batch=16, host=1, hosts=2, seed=5), k + m)
    loader = _loader(prepared, batch=16, host=1, hosts=2, seed=5)
    _take(loader, k)
    (tmp_path / "state.pkl").write_bytes(pickle.dumps(loader.get_state()))
    (tmp_path / "config.json").write_text(prepared.to_json())
    (tmp_path / "resume.py").write_text(RESUME_SCRIPT)
    result = subprocess.run([sys.executable, str(tmp_path / "resume.py"), str(tmp_path / "config.json"), "1",
                             str(tmp_path / "state.pkl"), str(m), str(tmp_path / "out.npz")],
                            capture_output=True, text=True, cwd=REPO, timeout=HANG_S)
    assert result.returncode == 0, result.stderr[-3000:]
    saved = np.load(tmp_path / "out.npz")
    resumed = [{key: saved[f"{i}/{key}"] for key in FEATURE_DTYPES} for i in range(m)]
    _assert_same(resumed, uninterrupted[k:])


@pytest.mark.parametrize("before, after", [(2, 1), (1, 2), (2, 4)])
def test_the_state_is_a_global_position_that_any_host_count_continues(prepared, before, after):
    """What checkpointing relies on to resume on another slice size: every host's state is the same, and set on
    `after` hosts it continues the global stream (the hosts' rows together are the uninterrupted batches)."""
    k, m = 3, 3
    uninterrupted = _take(_loader(prepared, batch=16, seed=5), k + m)
    old = [_loader(prepared, batch=16, host=h, hosts=before, seed=5) for h in range(before)]
    for loader in old:
        _take(loader, k)
    states = [loader.get_state() for loader in old]
    assert all(state == states[0] for state in states), states
    new = [_loader(prepared, batch=16, host=h, hosts=after, seed=5) for h in range(after)]
    for loader in new:
        loader.set_state(states[0])
    parts = [_take(loader, m) for loader in new]
    for t in range(m):
        for key in FEATURE_DTYPES:
            np.testing.assert_array_equal(np.concatenate([p[t][key] for p in parts]), uninterrupted[k + t][key],
                                          err_msg=key)


def test_orbax_checkpoint_of_the_iterator(prepared, tmp_path):
    ocp = pytest.importorskip("orbax.checkpoint")
    loader = _loader(prepared, seed=11)
    _take(loader, 3)
    with ocp.CheckpointManager(tmp_path / "ckpt") as manager:
        manager.save(3, args=grain.checkpoint.CheckpointSave(loader))
        manager.wait_until_finished()
        expected = _take(loader, 3)
        fresh = _loader(prepared, seed=11)
        manager.restore(3, args=grain.checkpoint.CheckpointRestore(fresh))
    _assert_same(_take(fresh, 3), expected)


def test_worker_processes_give_the_same_batches_and_resume(prepared):
    expected = _take(_loader(prepared), 6)
    with_workers = prepared.copy_and_resolve_references()
    with_workers.loader_workers = 2
    loader = _loader(with_workers)
    try:
        _assert_same(_take(loader, 3), expected[:3])
        state = loader.get_state()
    finally:
        loader.close()
    resumed = _loader(with_workers)
    try:
        resumed.set_state(state)
        _assert_same(_take(resumed, 3), expected[3:])
    finally:
        resumed.close()


def test_format_1_data_still_loads(prepared, tmp_path):
    """Format 1 wrote each instance's source document indices before its header; the same batches come out."""
    import json
    import shutil

    from array_record.python.array_record_module import ArrayRecordWriter

    from mobilebert_jax.data import manifest as manifest_lib
    from mobilebert_jax.data.prepare import ARRAY_RECORD_OPTIONS

    old = tmp_path / "format1"
    shutil.copytree(prepared.prepared_dir, old)
    manifest = json.loads((old / manifest_lib.MANIFEST).read_text())
    for split in manifest["splits"].values():
        for shard in split["shards"]:
            source = grain.sources.ArrayRecordDataSource([str(old / shard)])
            writer = ArrayRecordWriter(str(old / f"{shard}.v1"), ARRAY_RECORD_OPTIONS)
            for i in range(len(source)):  # any indices: nothing reads them
                writer.write(np.array([i, i + 1], "<i4").tobytes() + source[i])
            writer.close()
            (old / f"{shard}.v1").replace(old / shard)
    (old / manifest_lib.MANIFEST).write_text(json.dumps({**manifest, "format_version": 1}))
    config = prepared.copy_and_resolve_references()
    config.prepared_dir = str(old)
    _assert_same(_take(_loader(config), 3), _take(_loader(prepared), 3))
    assert prepare(config, str(old))["format_version"] == 1  # a finished format-1 directory is reused as it is


def test_gcs_shards_are_read_in_place_one_ranged_read_per_record_same_batches(prepared, gcs, tmp_path,
                                                                              monkeypatch):
    import gcsfs

    from mobilebert_jax.data.loader import make_pretraining_dataset

    gcsfs.GCSFileSystem().put(prepared.prepared_dir, f"{gcs.bucket}/{tmp_path.name}", recursive=True)
    remote = prepared.copy_and_resolve_references()
    remote.prepared_dir = gcs.uri(tmp_path.name)
    monkeypatch.setenv("MOBILEBERT_JAX_SCRATCH", str(tmp_path / "scratch"))
    counter = DownloadCounter(gcs.url)
    monkeypatch.setenv("CLOUD_STORAGE_EMULATOR_ENDPOINT", counter.url)  # ArrayRecord's client, through the counter
    try:
        kw = dict(split="train", global_batch_size=16, process_index=1, process_count=2, seed=1)
        steps = 3
        local = make_pretraining_dataset(prepared, **kw)
        here = make_pretraining_dataset(remote, **kw)
        _assert_same([here[t] for t in range(steps)], [local[t] for t in range(steps)])
    finally:
        counter.close()
    shards = load_manifest(prepared.prepared_dir)["splits"]["train"]["shards"]
    assert set(counter.requests) <= {f"{tmp_path.name}/{s}" for s in shards}, counter.requests
    assert not counter.whole, f"whole shards downloaded: {counter.whole}"
    # Each shard's index (counting its records, then the reader of the shards this host's rows fall in), then at
    # most one ranged read per record of this host's 8 rows of each batch: not the other host's, not whole shards.
    assert sum(counter.requests.values()) <= 2 * len(shards) + steps * 8, counter.requests
    assert not (tmp_path / "scratch").exists() or not any((tmp_path / "scratch").rglob("*.array_record"))
