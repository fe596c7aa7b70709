"""The workdir lock on gs://: tensorstore's conditional writes against the storage emulator (tests/gcs_emulator.py).

What the emulator cannot show is tested on local disk only (tests/test_workdir.py): it ignores the
ifGenerationMatch precondition of a write with a stale generation, so racing creators, or a takeover noticed by the
holder's heartbeat, look like successes there. Real GCS refuses such writes.
"""

import json
import time

import pytest

from mobilebert_jax import workdir as workdir_lib

gcs_emulator = pytest.importorskip("tests.gcs_emulator", reason="tests/gcs_emulator.py (the storage emulator) is "
                                                                "not in this checkout")
gcs = gcs_emulator.gcs  # the fixture


def test_the_lock_works_on_gcs(gcs):
    import tensorstore as ts

    workdir = gcs.uri("locked-run")
    store = ts.KvStore.open(workdir + "/").result()
    record = lambda: json.loads(store.read("LOCK").result().value)  # noqa: E731
    with workdir_lib.WorkdirLock(workdir) as lock:
        assert gcs.list("locked-run") == ["locked-run/LOCK"]
        with pytest.raises(workdir_lib.WorkdirInUseError, match="in use by host .* pid"):
            workdir_lib.WorkdirLock(workdir).acquire()
        lock.check()
    assert gcs.list("locked-run") == []  # released

    with workdir_lib.WorkdirLock(workdir, heartbeat_seconds=0.05) as lock:
        first = record()["heartbeat"]
        for _ in range(600):  # bounded by progress, not by a tight time limit
            if record()["heartbeat"] > first:
                break
            time.sleep(0.1)
        assert record()["heartbeat"] > first  # refreshed by conditional writes
        lock.check()
    assert gcs.list("locked-run") == []

    # A crashed run's lock on another host, its heartbeat old: taken over.
    store.write("LOCK", json.dumps({"host": "another-host", "pid": 1, "started": 0,
                                    "heartbeat": time.time() - 3600})).result()
    with workdir_lib.WorkdirLock(workdir):
        assert record()["host"] != "another-host"
