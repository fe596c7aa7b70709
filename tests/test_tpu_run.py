"""launch/tpu_run.sh: the exact gcloud calls of dry runs (queued resources, multislice, runtime versions), a fake
gcloud that refuses any flag the real one does not take, the pinned install, and a simulated pod (tests/fake_gcloud):
a bare image whose venv tpu_run.sh's own install step builds from the package index, and a two-slice job that a
`watch` restarts after a spot preemption until the trainer's FINISHED marker appears."""

from __future__ import annotations

import ast
import glob
import hashlib
import importlib.metadata
import json
import os
import re
import subprocess
import sys
import time

import pytest
from gcs_emulator import gcs  # noqa: F401  (the fixture: a pod's hosts share the workdir on gs://)
from limits import HANG_S

from mobilebert_jax import storage

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "launch", "tpu_run.sh")
FAKE = os.path.join(REPO, "tests", "fake_gcloud")
TOTAL, EVERY = 12, 4
VM = ["gcloud", "compute", "tpus", "tpu-vm"]
QR = ["gcloud", "compute", "tpus", "queued-resources"]


def tpu_run(*args, env=None, check=True, timeout=HANG_S) -> subprocess.CompletedProcess:
    proc = subprocess.run([SCRIPT, *args], env=env, capture_output=True, text=True, timeout=timeout)
    if check:
        assert proc.returncode == 0, f"{args}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def setup_stamp(pip_spec: str = "-e .[tpu]", python: str = "3.11") -> str:
    with open(os.path.join(REPO, "setup.py"), "rb") as f:
        return f"{hashlib.sha256(f.read()).hexdigest()} {python} {pip_spec}"


def argv(line: str) -> list[str]:
    """The words bash makes of a printed command (it prints $'...' quoting, which shlex cannot read)."""
    out = subprocess.run(["bash", "-c", 'words() { printf "%s\\0" "$@"; }; eval "words $1"', "_", line],
                         capture_output=True, text=True, check=True).stdout
    return out.split("\0")[:-1]


def commands(out: str) -> list[list[str]]:
    return [argv(line) for line in out.splitlines()]


def test_dry_run_prints_the_exact_gcloud_calls():
    common = ["--name=mb", "--zone=europe-west4-a", "--project=proj", "--dry_run"]
    out = tpu_run(*common, "--accelerator=v3-256", "--spot", "start", "--", "--config=experiments/distill_pd.py",
                  "--workdir=gs://bucket/runs/pd", "--config.mesh.shape=(16, 16, 1)").stdout
    calls = commands(out)
    where = ["--zone=europe-west4-a", "--project=proj"]
    assert calls[0] == QR + ["create", "mb", *where, "--accelerator-type=v3-256",
                             "--runtime-version=tpu-ubuntu2204-base", "--node-id=mb", "--spot"]
    assert calls[1][:5] == VM + ["scp"] and calls[1][6:] == ["mb:~/mobilebert-jax.tar.gz", *where, "--worker=all"]
    assert calls[2][:-1] == calls[3][:-1] == VM + ["ssh", "mb", *where, "--worker=all"]
    assert len(calls) == 4
    prepare, start = calls[2][-1].removeprefix("--command="), calls[3][-1].removeprefix("--command=")
    # Stale processes go first, then the code is unpacked, and the venv is built (by uv, with a Python >= 3.11)
    # only if setup.py, the Python or the pip spec changed.
    order = [prepare.index(s) for s in ("kill -TERM", "fuser -k", "tar xzf", "pip install -q --user", "uv venv",
                                        "pip install -q --python")]
    assert order == sorted(order)
    assert f'= "{setup_stamp()}" ]' in prepare
    assert "$uv venv -q --python 3.11 ~/mobilebert-jax-venv" in prepare
    assert "$uv pip install -q --python ~/mobilebert-jax-venv/bin/python -e .[tpu]" in prepare
    launch = next(line for line in start.splitlines() if line.startswith("nohup "))
    inner, args = re.fullmatch(r"nohup bash -c '(.*)' run (.*)> (\S+) 2>&1 < /dev/null &", launch).group(1, 2)
    # The wrapper records its own pid, starts the trainer and records its pid, then its exit status.
    assert inner.startswith('echo $$ > ~/mobilebert-jax-logs/train.wrapper; '
                            '~/mobilebert-jax-venv/bin/python -m mobilebert_jax.main "$@" ')
    assert inner.endswith("echo $! > ~/mobilebert-jax-logs/train.pid; wait $!; "
                          "echo $? > ~/mobilebert-jax-logs/train.exit")
    # The training arguments reach the workers' shell exactly as given here.
    assert argv(args) == ["--config=experiments/distill_pd.py", "--workdir=gs://bucket/runs/pd",
                          "--config.mesh.shape=(16, 16, 1)"]
    assert "> ~/mobilebert-jax-logs/train-$HOSTNAME.log" in start

    for command, expected in [
        (["logs"],
         VM + ["ssh", "mb", *where, "--worker=0", "--command=tail -n 50 -F ~/mobilebert-jax-logs/train-*.log"]),
        (["--run=r2", "fetch-logs", "/tmp/logs"],
         VM + ["scp", "mb:~/mobilebert-jax-logs/r2-*.log", "/tmp/logs", *where, "--worker=all"]),
        (["delete"], QR + ["delete", "mb", *where, "--force", "--quiet"]),
        (["--no_queue", "delete"], VM + ["delete", "mb", *where, "--quiet"]),
    ]:
        assert commands(tpu_run(*common, *command).stdout) == [expected], command
    stop = argv(tpu_run(*common, "--grace=30", "stop").stdout)
    assert stop[:-1] == VM + ["ssh", "mb", *where, "--worker=all"] and "seq 30" in stop[-1]
    # Without a queue: the node itself, as `tpu-vm create` takes it.
    direct = commands(tpu_run(*common, "--no_queue", "--spot", "start", "--", "--workdir=w").stdout)[0]
    assert direct == VM + ["create", "mb", *where, "--accelerator-type=v3-8", "--version=tpu-ubuntu2204-base",
                           "--spot"]


@pytest.mark.parametrize("accelerator,version", [
    ("v3-8", "tpu-ubuntu2204-base"), ("v4-128", "tpu-ubuntu2204-base"), ("v5litepod-256", "v2-alpha-tpuv5-lite"),
    ("v5p-512", "v2-alpha-tpuv5"), ("v6e-256", "v2-alpha-tpuv6e")])
def test_runtime_version_follows_the_generation(accelerator, version):
    out = tpu_run("--name=mb", "--zone=z", f"--accelerator={accelerator}", "--dry_run", "start", "--", "-w").stdout
    assert f"--runtime-version={version}" in commands(out)[0]
    out = tpu_run("--name=mb", "--zone=z", f"--accelerator={accelerator}", "--version=mine", "--dry_run", "start",
                  "--", "-w").stdout
    assert "--runtime-version=mine" in commands(out)[0]


def test_dry_run_multislice_and_best_effort():
    out = tpu_run("--name=mb", "--zone=z", "--accelerator=v5litepod-256", "--node_count=2", "--best_effort",
                  "--dry_run", "start", "--", "--workdir=gs://b/r").stdout
    calls = commands(out)
    # Best-effort capacity exists only in gcloud's alpha track; N slices are one request with --node-count.
    assert calls[0] == ["gcloud", "alpha", "compute", "tpus", "queued-resources", "create", "mb", "--zone=z",
                        "--accelerator-type=v5litepod-256", "--runtime-version=v2-alpha-tpuv5-lite",
                        "--node-count=2", "--node-prefix=mb", "--best-effort"]
    # Every node (slice) gets the code, the set-up and the start.
    assert [c[4] for c in calls[1:]] == ["scp", "scp", "ssh", "ssh", "ssh", "ssh"]
    assert [c[6] for c in calls[1:3]] == ["mb-0:~/mobilebert-jax.tar.gz", "mb-1:~/mobilebert-jax.tar.gz"]
    assert [c[5] for c in calls[3:]] == ["mb-0", "mb-1", "mb-0", "mb-1"]


def _fake(*args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([os.path.join(FAKE, "gcloud"), *args], capture_output=True, text=True, env=env)


def test_fake_gcloud_rejects_flags_the_real_command_does_not_take(tmp_path):
    env = {**os.environ, "FAKE_GCLOUD_ROOT": str(tmp_path)}
    bad = _fake("compute", "tpus", "tpu-vm", "create", "mb", "--zone=z", "--acelerator-type=v3-8",
                "--version=tpu-ubuntu2204-base", env=env)
    assert bad.returncode == 2
    assert bad.stderr.startswith("ERROR: (gcloud.compute.tpus.tpu-vm.create) unrecognized arguments: "
                                 "--acelerator-type=v3-8")
    for args, message in [
        (["queued-resources", "create", "q", "--zone=z", "--accelerator-type=v3-8", "--runtime-version=v",
          "--node-id=q", "--best-effort"], "unrecognized arguments: --best-effort"),  # alpha only
        (["queued-resources", "create", "q", "--zone=z", "--accelerator-type=v3-8", "--node-id=q"],
         "argument --runtime-version: Must be specified."),
        (["tpu-vm", "create", "q", "--zone=z", "--version=v", "--runtime-version=v"],  # that is queued-resources'
         "unrecognized arguments: --runtime-version=v"),
        (["tpu-vm", "delete", "q", "--zone=z", "--spot=yes"], "unrecognized arguments: --spot=yes"),
        (["queued-resources", "delete", "q", "--force=true"], "argument --force: ignored explicit argument"),
        (["tpu-vm", "ssh", "q", "--workers=all"], "unrecognized arguments: --workers=all"),
    ]:
        proc = _fake("compute", "tpus", *args, env=env)
        assert proc.returncode == 2 and message in proc.stderr, (args, proc.stderr)
    ok = _fake("alpha", "compute", "tpus", "queued-resources", "create", "q", "--zone=z", "--accelerator-type=v3-8",
               "--runtime-version=v", "--node-id=q", "--best-effort", "--project=p", "--quiet", env=env)
    assert ok.returncode == 0, ok.stderr


def test_every_printed_command_parses_in_the_fake(tmp_path):
    """Each gcloud call a dry run prints gets past the flag tables of the commands it calls."""
    env = {**os.environ, "FAKE_GCLOUD_ROOT": str(tmp_path), "FAKE_GCLOUD_PARSE_ONLY": "1"}
    runs = [["--spot", "start", "--", "--workdir=w"], ["--best_effort", "--node_count=3", "start", "--", "-w"],
            ["--no_queue", "--spot", "start", "--", "-w"], ["logs"], ["--worker=all", "logs"], ["stop"],
            ["fetch-logs", str(tmp_path / "logs")], ["delete"], ["--no_queue", "delete"]]
    seen = 0
    for run in runs:
        for call in commands(tpu_run("--name=mb", "--zone=z", "--project=p", "--dry_run", *run).stdout):
            proc = _fake(*call[1:], env=env)
            assert proc.returncode == 0, (call, proc.stderr)
            seen += 1
    assert seen >= 20


@pytest.mark.parametrize("args,message", [
    (["--zone=z", "start"], "--name (or TPU_NAME) is required"),
    (["--name=n", "--zone=z", "start"], "start needs the training arguments after --"),
    (["--name=n", "--zone=z", "watch", "--", "--config=x.py"], "watch needs --workdir"),
    (["--name=n", "--zone=z", "--worker=x", "logs"], "--worker=x: must be a worker index or all"),
    (["--name=n", "--zone=z", "--bogus", "stop"], "unknown option --bogus"),
    (["--name=n", "--zone=z", "launch"], "unknown command launch"),
    (["--name=n", "--zone=z", "--node_count=0", "stop"], "--node_count=0: must be a whole number >= 1"),
    (["--name=n", "--zone=z", "--no_queue", "--node_count=2", "stop"], "needs a queued resource"),
    (["--name=n", "--zone=z", "--spot", "--best_effort", "stop"], "--spot and --best_effort exclude each other"),
    (["--name=n", "--zone=z", "--accelerator=v9-8", "stop"], "--accelerator=v9-8: no default runtime version"),
    (["--name=n", "--zone=z", "--python=3", "stop"], "--python=3: must be a Python version"),
    (["--name=n", "--zone=z", "--poll=soon", "stop"], "--poll=soon: must be a number of seconds"),
    (["--name=n", "--zone=z", "--settle=1.5", "stop"], "--settle=1.5: must be a whole number of seconds"),
])
def test_bad_arguments_are_named(args, message):
    proc = tpu_run(*args, "--dry_run", check=False, env={**os.environ, "TPU_NAME": ""})
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr


def test_the_preflight_runs_before_any_slice_is_requested_and_a_problem_stops_there(tmp_path):
    from test_preflight import has_libtpu

    if not has_libtpu():
        pytest.skip("libtpu is not installed (python -m mobilebert_jax.tools.install_libtpu)")
    env = {**os.environ, "PATH": FAKE + os.pathsep + os.environ["PATH"], "FAKE_GCLOUD_ROOT": str(tmp_path),
           "TPU_PREFLIGHT": sys.executable, "TPU_PREFLIGHT_ARGS": "--nocompile --offline"}
    env.pop("XLA_FLAGS", None)
    proc = tpu_run("--name=mb", "--zone=z", "--accelerator=v5litepod-8", "start", "--",
                   "--config=experiments/teacher_ib_bert_large.py:smoke", "--workdir=gs://bucket/runs/t",
                   "--config.batch_size=12", env=env, check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "preflight: " in proc.stdout and "--topology=v5litepod-8 --num_slices=1 --nocompile --offline" in proc.stdout
    fatal = [line for line in proc.stderr.splitlines() if line.startswith("FATAL ")]
    assert len(fatal) == 1 and "config.batch_size=12 is not divisible by data=8" in fatal[0], proc.stderr
    assert "the preflight refused the run" in proc.stderr
    assert not os.path.exists(os.path.join(tmp_path, "calls.jsonl"))  # gcloud was never called
    dry = tpu_run("--name=mb", "--zone=z", "--dry_run", "start", "--", "--config=x.py", "--workdir=gs://b/r").stderr
    assert "preflight (not run with --dry_run): python3 -m mobilebert_jax.tools.preflight --topology=v3-8" in dry


def test_help():
    out = tpu_run("--help").stdout
    assert out.startswith("Usage: launch/tpu_run.sh") and "fetch-logs DIR" in out and "--dry_run" in out
    assert "watch" in out and "--node_count" in out and "v2-alpha-tpuv6e" in out


def _setup_py_pins() -> dict[str, str]:
    tree = ast.parse(open(os.path.join(REPO, "setup.py")).read())
    return {t.id: node.value.value for node in tree.body if isinstance(node, ast.Assign)
            for t in node.targets if isinstance(node.value, ast.Constant)}


def test_pins_match_what_this_environment_compiles_with():
    from mobilebert_jax.tools import install_libtpu
    pins = _setup_py_pins()
    assert importlib.metadata.version("jax") == importlib.metadata.version("jaxlib") == pins["JAX"]
    assert install_libtpu.REQUIREMENT == pins["LIBTPU"]
    assert install_libtpu.pinned_requirement() == pins["LIBTPU"]  # within what the pinned jax accepts
    # python_requires is what jax itself needs (jaxlib and libtpu 0.0.42 say the same on PyPI).
    setup_text = open(os.path.join(REPO, "setup.py")).read()
    requires_python = importlib.metadata.metadata("jax")["Requires-Python"]
    assert f'python_requires="{requires_python}"' in setup_text


def _pids(root: str, node: str = "pod") -> list[int]:
    pids = []
    for path in glob.glob(os.path.join(root, node, "workers", "worker-*", "mobilebert-jax-logs", "train.pid")):
        with open(path) as f:
            pids.append(int(f.read()))
    return pids


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A finished child of the fake's session that nobody reaped yet is not running.
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(")")[-1].split()[0] != "Z"


def _wait(condition, what: str, timeout: float = HANG_S) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def _finalized(step_dir) -> bool:
    import orbax.checkpoint as ocp

    return step_dir.is_dir() and ocp.step.is_checkpoint_finalized(step_dir)


def _pod_env(tmp_path, image, **extra) -> dict[str, str]:
    return {**os.environ, "PATH": FAKE + os.pathsep + os.environ["PATH"], "FAKE_GCLOUD_ROOT": str(tmp_path / "gcloud"),
            "FAKE_GCLOUD_IMAGE": str(image), "TPU_NAME": "pod", "TPU_ZONE": "local-a", "TPU_POLL": "0.2",
            # The simulated slices are CPU processes; the preflight's own test is test_the_preflight_*.
            "TPU_PREFLIGHT": "none",
            # The bundled tokenizer, trained once, is shared rather than retrained in every fresh worker home.
            "MOBILEBERT_JAX_CACHE": os.environ.get("MOBILEBERT_JAX_CACHE") or
            os.path.join(os.path.expanduser("~"), ".cache", "mobilebert_jax"), **extra}


def _train_args(run: str, total: int = TOTAL) -> list[str]:
    return ["--", "--config=experiments/teacher_ib_bert_large.py:smoke", f"--workdir={run}",
            f"--config.total_steps={total}", "--config.optimizer.schedule.warmup_steps=2",
            f"--config.checkpoint.every_steps={EVERY}",
            "--config.eval.num_batches=0", "--config.log_every=2"]


def _calls(root: str) -> list[list[str]]:
    with open(os.path.join(root, "calls.jsonl")) as f:
        return [json.loads(line) for line in f]


@pytest.mark.slow
def test_simulated_pod_installs_from_the_package_index_on_a_bare_image(tmp_path, gcs):  # noqa: F811
    """A bare VM image: tpu_run.sh's install step gets uv from the package index, makes the venv with a Python
    >= 3.11 and installs this checkout with its pinned jax (the CPU variant here, with the gcs extra), then the
    run trains on it, its workdir on (emulated) Cloud Storage as every multi-host run's must be."""
    run = gcs.uri("pod-install", tmp_path.name)
    image = tmp_path / "image"
    image.mkdir()
    env = _pod_env(tmp_path, image, FAKE_GCLOUD_WORKERS="2", TPU_PIP_SPEC="-e .[gcs]",
                   # A pip/uv cache shared between runs keeps this cheap; never a Python download here.
                   UV_CACHE_DIR=os.environ.get("UV_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache",
                                                                               "uv"),
                   UV_PYTHON_DOWNLOADS="never")
    root = env["FAKE_GCLOUD_ROOT"]
    try:
        out = tpu_run("start", *_train_args(run, total=EVERY), env=env, timeout=HANG_S).stdout
        assert out.count("setting up ~/mobilebert-jax-venv (Python 3.11, -e .[gcs])") == 2, out
        assert out.count("venv ready: Python 3.11") == 2, out
        for home in glob.glob(os.path.join(root, "pod", "workers", "worker-*")):
            venv = os.path.join(home, "mobilebert-jax-venv")
            assert not os.path.islink(venv)  # made on the worker, not the test's environment linked in
            freeze = subprocess.run([os.path.join(venv, "bin", "python"), "-c",
                                     "import importlib.metadata as m; print(m.version('jax'), m.version('jaxlib'))"],
                                    capture_output=True, text=True, check=True).stdout.split()
            assert freeze == [_setup_py_pins()["JAX"]] * 2
            assert open(os.path.join(home, ".mobilebert-jax-setup")).read().strip() == setup_stamp("-e .[gcs]")
        pids = _pids(root)
        _wait(lambda: not any(map(_alive, pids)), "the run to finish")
        assert storage.path(run, "FINISHED").read_text().strip() == str(EVERY)
    finally:
        subprocess.run(["gcloud", "compute", "tpus", "queued-resources", "delete", "pod", "--zone=local-a",
                        "--force", "--quiet"], env=env, capture_output=True)


def test_simulated_multislice_pod_is_watched_through_a_preemption(tmp_path, gcs):  # noqa: F811
    """Two slices (queued resource with --node_count=2, one worker each: processes 0 and 1 of one job); `watch`
    starts the run, the spot capacity is preempted after the first checkpoint (every process killed, the queued
    resource SUSPENDED), and the watch requests it again and restarts until the trainer writes FINISHED."""
    run, logs = gcs.uri("pod-watch", tmp_path.name), str(tmp_path / "logs")  # two hosts: shared storage
    image = tmp_path / "image"  # the VM image holds the project's environment, already set up (see the test above)
    image.mkdir()
    (image / "mobilebert-jax-venv").symlink_to(os.path.join(REPO, ".venv"))
    (image / ".mobilebert-jax-setup").write_text(setup_stamp() + "\n")
    env = _pod_env(tmp_path, image, FAKE_GCLOUD_WORKERS="1", TPU_NODE_COUNT="2", TPU_SPOT="1",
                   TPU_MAX_RESTARTS="2")
    root = env["FAKE_GCLOUD_ROOT"]
    watch = subprocess.Popen([SCRIPT, "watch", *_train_args(run)], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    try:
        # On gs:// a step directory exists while it is written (no atomic rename): wait until orbax finalized it.
        _wait(lambda: _finalized(storage.path(run, "checkpoints", str(EVERY))) or watch.poll() is not None,
              f"checkpoint {EVERY}")
        assert watch.poll() is None, watch.stdout.read()
        pids = _pids(root, "pod-0") + _pids(root, "pod-1")
        assert len(pids) == 2 and all(map(_alive, pids))
        subprocess.run(["gcloud", "fake-preempt", "pod"], env=env, check=True)  # every process killed at once
        done = sorted(int(p.name) for p in storage.path(run, "checkpoints").iterdir()
                      if p.name.isdigit() and _finalized(p))
        assert done and done[-1] < TOTAL
        out, _ = watch.communicate(timeout=HANG_S)
        assert watch.returncode == 0, out
        # Whichever the watch sees first: the queued resource SUSPENDED or one of its nodes PREEMPTED.
        assert re.search(r"watch: (queued resource pod is SUSPENDED|node pod-[01] is PREEMPTED): restarting the run "
                         r"\(restart 1 of at most 2\)", out), out
        assert "slice pod is SUSPENDED: deleting and requesting it again" in out
        assert "watch: the run finished" in out
        # One preemption, one restart (however the watch's polls fell between the processes' death and the states).
        assert out.count("restarting the run") == 1, out
        # The image's stamp matches: no install, before and after.
        assert "setting up" not in out and out.count("venv up to date") == 4, out
        assert storage.path(run, "FINISHED").read_text().strip() == str(TOTAL)

        tpu_run("fetch-logs", logs, env=env)
        names = sorted(os.listdir(logs))
        assert names == ["train-pod-0-w-0.log", "train-pod-1-w-0.log"]
        log0 = open(os.path.join(logs, names[0])).read()
        assert re.search(r"resumed from step \d+", log0), log0[-3000:]
        assert f"step {TOTAL}/{TOTAL}" in log0 and "done: checkpoints in" in log0
        assert "process 0 of 2" in log0
        assert "resumed from step" not in open(os.path.join(logs, names[1])).read()  # only process 0 reports
        status = tpu_run("status", env=env).stdout
        assert "queued resource pod: ACTIVE" in status and status.count("not running") == 2
    finally:
        if watch.poll() is None:
            watch.kill()
        subprocess.run(["gcloud", "compute", "tpus", "queued-resources", "delete", "pod", "--zone=local-a",
                        "--force", "--quiet"], env=env, capture_output=True)
    calls = [c for c in _calls(root) if c[:1] != ["fake-preempt"]]
    creates = [c for c in calls if c[2:5] == ["queued-resources", "create", "pod"]]
    assert len(creates) == 2 and all("--node-count=2" in c and "--spot" in c for c in creates)
    assert ["compute", "tpus", "queued-resources", "delete", "pod", "--zone=local-a", "--force", "--quiet"] in calls


def _stub_image(tmp_path):
    """A VM image whose venv python stands in for the trainer (STUB_MODE says how it ends) and answers the watch's
    FINISHED check with the real interpreter: the watch's decisions, without JAX."""
    image = tmp_path / "image"
    (image / "mobilebert-jax-venv" / "bin").mkdir(parents=True)
    stub = image / "mobilebert-jax-venv" / "bin" / "python"
    stub.write_text(f"""#!/usr/bin/env bash
if [ "$1" = -c ]; then exec {os.path.join(REPO, ".venv", "bin", "python")} "$@"; fi
case "$STUB_MODE" in
  fail) echo "FATAL config error: config.model.hidden_size=-1: must be positive"; exit 1 ;;
  early) echo "preempted: saved a checkpoint at step 4"; exit 75 ;;
  interrupted) echo "interrupted: the run stopped before its last step"; exit 130 ;;
  sleep) trap 'echo "preempted: saved a checkpoint at step 4"; exit 75' TERM
         for _ in $(seq 3000); do sleep 0.1; done ;;
  # The moment between the trainer's end and the wrapper writing its exit status, held open for 2 s: the pid
  # file names a process that has ended, and there is no status yet. Then the run finishes.
  ending) true & dead=$!; wait $dead; echo $dead > ~/mobilebert-jax-logs/train.pid
          sleep 2
          for arg; do case "$arg" in --workdir=*) mkdir -p "${{arg#*=}}"; touch "${{arg#*=}}/FINISHED" ;; esac; done ;;
esac
""")
    stub.chmod(0o755)
    (image / ".mobilebert-jax-setup").write_text(setup_stamp() + "\n")
    return image


@pytest.mark.parametrize("mode,code,message", [
    ("fail", 1, "watch: the run failed: process 0 exited 1"),
    ("early", 1, "the run was restarted 1 times already (--max_restarts): giving up"),
    ("interrupted", 130, "watch: the run was interrupted (Ctrl-C on worker 0, exit 130); not restarting it"),
])
def test_watch_ends_on_a_failure_and_bounds_restarts(tmp_path, mode, code, message):
    env = _pod_env(tmp_path, _stub_image(tmp_path), FAKE_GCLOUD_WORKERS="1", TPU_MAX_RESTARTS="1", STUB_MODE=mode,
                   TPU_SETTLE="0")
    proc = tpu_run("watch", "--", f"--workdir={tmp_path / 'run'}", env=env, check=False, timeout=HANG_S)
    assert proc.returncode == code and message in proc.stderr, proc.stdout + proc.stderr
    if mode == "fail":  # not restarted (it would fail the same way), and the log's end shown
        assert "restarting" not in proc.stdout and "FATAL config error: config.model.hidden_size" in proc.stderr
    elif mode == "interrupted":  # a person stopped it: not restarted
        assert "restarting" not in proc.stdout
    else:  # saved and stopped early (status 75) on a healthy slice: restarted there, without requesting a new slice
        assert ("process 0 stopped before the end (preempted) on a healthy slice: restarting the run (restart 1 of at "
                "most 1)") in proc.stdout
        creates = [c for c in _calls(env["FAKE_GCLOUD_ROOT"]) if c[2:4] == ["queued-resources", "create"]]
        assert len(creates) == 1


def test_watch_waits_for_the_exit_status_of_a_trainer_that_just_ended(tmp_path):
    """A poll that falls after the trainer ended but before its wrapper wrote the exit status sees the run still
    running, not gone: no restart (CI once saw a finished run restarted after such a poll, on a loaded machine)."""
    env = _pod_env(tmp_path, _stub_image(tmp_path), FAKE_GCLOUD_WORKERS="1", TPU_MAX_RESTARTS="0",
                   STUB_MODE="ending", TPU_SETTLE="0")
    proc = tpu_run("watch", "--", f"--workdir={tmp_path / 'run'}", env=env, check=False, timeout=HANG_S)
    assert proc.returncode == 0 and "watch: the run finished" in proc.stdout, proc.stdout + proc.stderr
    assert "stopped before the end" not in proc.stdout


def test_watch_ends_when_the_run_is_stopped(tmp_path):
    env = _pod_env(tmp_path, _stub_image(tmp_path), FAKE_GCLOUD_WORKERS="1", STUB_MODE="sleep")
    watch = subprocess.Popen([SCRIPT, "watch", "--", f"--workdir={tmp_path / 'run'}"], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _wait(lambda: _pids(env["FAKE_GCLOUD_ROOT"]) or watch.poll() is not None, "the run to start")
        tpu_run("--grace=30", "stop", env=env)
        out, _ = watch.communicate(timeout=HANG_S)
        assert watch.returncode == 0 and "watch: the run was stopped (tpu_run.sh stop); not restarting it" in out, out
    finally:
        if watch.poll() is None:
            watch.kill()


def test_one_preemption_seen_over_several_polls_is_one_restart(tmp_path):
    """Cloud TPU shows a preemption late: the processes are gone while the node still describes READY, then the node
    is PREEMPTED, and only at the next poll the queued resource SUSPENDED. The watch must restart once, on a new
    slice; a watch that restarted as soon as process 0 was gone would do so on the dying slice, then again."""
    env = _pod_env(tmp_path, _stub_image(tmp_path), FAKE_GCLOUD_WORKERS="1", STUB_MODE="sleep", TPU_SPOT="1",
                   TPU_MAX_RESTARTS="3", TPU_SETTLE=str(HANG_S))  # the settle ends when the slice shows trouble
    # Processes killed at once; the node describes READY twice more (enough for the watch to see process 0 gone
    # and for a relaunch to find the slice healthy), then PREEMPTED; the queued resource SUSPENDED after that.
    out = _watch_through_one_preemption(tmp_path, env, ["gcloud", "fake-preempt", "pod", "--staged=2"])
    # The start's own ssh session may still be running when the processes are killed (then it fails with them).
    assert re.search(r"watch: (process 0 stopped before the end \(gone\)|starting the run failed \(exit \d+\)); "
                     r"checking the slice", out), out
    # The queued resource was SUSPENDED by the time the slice was requested again: deleted once, created once more.
    assert "slice pod is SUSPENDED: deleting and requesting it again" in out, out


def test_a_preemption_while_the_run_starts_is_one_restart(tmp_path):
    """The VM goes down while `start` runs on it (its ssh session cut off, exit 255): the watch checks the slice,
    sees the preemption, and restarts once on a new slice instead of ending."""
    env = _pod_env(tmp_path, _stub_image(tmp_path), FAKE_GCLOUD_WORKERS="1", STUB_MODE="sleep", TPU_SPOT="1",
                   TPU_MAX_RESTARTS="3", TPU_SETTLE=str(HANG_S), FAKE_GCLOUD_PREEMPT_AT_SSH="2")  # 1: prepare, 2: start
    out = _watch_through_one_preemption(tmp_path, env, preempt=None)
    assert "watch: starting the run failed (exit 255); checking the slice" in out, out


def _watch_through_one_preemption(tmp_path, env, preempt: list[str] | None) -> str:
    """Watches the stand-in trainer (`env`: 3 restarts allowed) through one preemption, the `preempt` command run
    once the run has started (None: the environment preempts by itself), until it runs again on a second slice;
    then stops it. Checks that this took one restart and one more slice; returns the watch's output."""
    root = env["FAKE_GCLOUD_ROOT"]
    watch = subprocess.Popen([SCRIPT, "watch", "--", f"--workdir={tmp_path / 'run'}"], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        first = []
        if preempt:
            _wait(lambda: _pids(root) or watch.poll() is not None, "the run to start")
            first = _pids(root)
            subprocess.run(preempt, env=env, check=True)
        _wait(lambda: (_pids(root) not in ([], first) and _creates(root) == 2 and all(map(_alive, _pids(root))))
              or watch.poll() is not None, "the run to restart on a new slice")
        tpu_run("--grace=30", "stop", env=env)
        out, _ = watch.communicate(timeout=HANG_S)
    finally:
        if watch.poll() is None:
            watch.kill()
    assert watch.returncode == 0 and "watch: the run was stopped" in out, out
    assert "watch: node pod is PREEMPTED: restarting the run (restart 1 of at most 3)" in out, out
    assert out.count("restarting the run") == 1 and _creates(root) == 2, out
    return out


def _creates(root: str) -> int:
    return sum(c[2:4] == ["queued-resources", "create"] for c in _calls(root))


def test_a_launch_that_fails_on_a_healthy_slice_ends_the_watch(tmp_path):
    """Starting the run fails and the slice stays healthy: not a preemption, so no restart loop; the watch ends with
    the failure's status after --settle."""
    image = _stub_image(tmp_path)
    (image / ".mobilebert-jax-setup").write_text("another setup\n")  # the venv is rebuilt ...
    uv = image / ".local" / "bin" / "uv"  # ... by a uv that fails (no space left on the VM's disk, say)
    uv.parent.mkdir(parents=True)
    uv.write_text(f"#!/usr/bin/env bash\n[ \"$1\" = --version ] && echo 'uv {_uv_version()}' && exit 0\n"
                  "echo 'error: No space left on device' >&2; exit 1\n")
    uv.chmod(0o755)
    env = _pod_env(tmp_path, image, FAKE_GCLOUD_WORKERS="1", TPU_SETTLE="1")
    proc = tpu_run("watch", "--", f"--workdir={tmp_path / 'run'}", env=env, check=False, timeout=HANG_S)
    assert proc.returncode != 0 and "restarting" not in proc.stdout, proc.stdout + proc.stderr
    assert re.search(r"starting the run failed \(exit \d+\) on a healthy slice: giving up", proc.stderr), proc.stderr
    # The failed set-up stopped the launch: nothing was started on a venv that is not there.
    assert "No space left on device" in proc.stderr and "started process" not in proc.stdout, proc.stdout


def _uv_version() -> str:
    return re.search(r"^UV_VERSION=(\S+)", open(SCRIPT).read(), re.M).group(1)
