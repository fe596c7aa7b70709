"""launch/tpu_run.sh: the exact gcloud calls of a dry run, and a simulated pod (tests/fake_gcloud) that trains the
smoke teacher on two local worker processes, is preempted (every process killed, the slice marked PREEMPTED), and
resumes from its checkpoint when `start` is run again."""

from __future__ import annotations

import glob
import hashlib
import json
import os
import subprocess
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "launch", "tpu_run.sh")
FAKE = os.path.join(REPO, "tests", "fake_gcloud")
TOTAL, EVERY = 12, 4


def tpu_run(*args, env=None, check=True, timeout=600) -> subprocess.CompletedProcess:
    proc = subprocess.run([SCRIPT, *args], env=env, capture_output=True, text=True, timeout=timeout)
    if check:
        assert proc.returncode == 0, f"{args}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def setup_stamp(pip_spec: str = "-e .[tpu]") -> str:
    with open(os.path.join(REPO, "setup.py"), "rb") as f:
        return f"{hashlib.sha256(f.read()).hexdigest()} {pip_spec}"


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
    vm = ["gcloud", "compute", "tpus", "tpu-vm"]
    assert calls[0] == vm + ["describe", "mb", *where, "--format=value(state)"]
    assert calls[1] == vm + ["create", "mb", *where, "--accelerator-type=v3-256", "--version=tpu-ubuntu2204-base",
                             "--spot"]
    assert calls[2][:5] == vm + ["scp"] and calls[2][6:] == ["mb:~/mobilebert-jax.tar.gz", *where, "--worker=all"]
    assert calls[3][:-1] == calls[4][:-1] == vm + ["ssh", "mb", *where, "--worker=all"]
    assert len(calls) == 5
    prepare, start = calls[3][-1].removeprefix("--command="), calls[4][-1].removeprefix("--command=")
    # Stale processes go first, then the code is unpacked, and the venv is built only if setup.py changed.
    order = [prepare.index(s) for s in ("kill -TERM", "fuser -k", "tar xzf", "pip install")]
    assert order == sorted(order)
    assert f'= "{setup_stamp()}" ]' in prepare
    launch = start.splitlines()[1]
    assert launch.startswith("nohup ~/mobilebert-jax-venv/bin/python -m mobilebert_jax.main ")
    # The training arguments reach the workers' shell exactly as given here.
    assert argv(launch.split("mobilebert_jax.main ", 1)[1].split(" > ")[0]) == [
        "--config=experiments/distill_pd.py", "--workdir=gs://bucket/runs/pd", "--config.mesh.shape=(16, 16, 1)"]
    assert "> ~/mobilebert-jax-logs/train-$HOSTNAME.log" in start

    for command, expected in [
        (["logs"],
         vm + ["ssh", "mb", *where, "--worker=0", "--command=tail -n 50 -F ~/mobilebert-jax-logs/train-*.log"]),
        (["--run=r2", "fetch-logs", "/tmp/logs"],
         vm + ["scp", "mb:~/mobilebert-jax-logs/r2-*.log", "/tmp/logs", *where, "--worker=all"]),
        (["delete"], vm + ["delete", "mb", *where, "--quiet"]),
    ]:
        assert commands(tpu_run(*common, *command).stdout) == [expected], command
    stop = argv(tpu_run(*common, "--grace=30", "stop").stdout)
    assert stop[:-1] == vm + ["ssh", "mb", *where, "--worker=all"] and "seq 30" in stop[-1]


@pytest.mark.parametrize("args,message", [
    (["--zone=z", "start"], "--name (or TPU_NAME) is required"),
    (["--name=n", "--zone=z", "start"], "start needs the training arguments after --"),
    (["--name=n", "--zone=z", "--worker=x", "logs"], "--worker=x: must be a worker index or all"),
    (["--name=n", "--zone=z", "--bogus", "stop"], "unknown option --bogus"),
    (["--name=n", "--zone=z", "launch"], "unknown command launch"),
])
def test_bad_arguments_are_named(args, message):
    proc = tpu_run(*args, "--dry_run", check=False, env={**os.environ, "TPU_NAME": ""})
    assert proc.returncode == 2 and message in proc.stderr


def test_help():
    out = tpu_run("--help").stdout
    assert out.startswith("Usage: launch/tpu_run.sh") and "fetch-logs DIR" in out and "--dry_run" in out


def _pids(root: str) -> list[int]:
    pids = []
    for path in glob.glob(os.path.join(root, "pod", "workers", "worker-*", "mobilebert-jax-logs", "train.pid")):
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


def _wait(condition, what: str, timeout: float = 420) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def test_simulated_pod_trains_is_preempted_and_resumes(tmp_path):
    root, run, logs = str(tmp_path / "gcloud"), str(tmp_path / "run"), str(tmp_path / "logs")
    image = tmp_path / "image"  # what the workers' VM image holds: the project's environment, already set up
    image.mkdir()
    (image / "mobilebert-jax-venv").symlink_to(os.path.join(REPO, ".venv"))
    (image / ".mobilebert-jax-setup").write_text(setup_stamp() + "\n")
    env = {**os.environ, "PATH": FAKE + os.pathsep + os.environ["PATH"], "FAKE_GCLOUD_ROOT": root,
           "FAKE_GCLOUD_IMAGE": str(image), "TPU_NAME": "pod", "TPU_ZONE": "local-a",
           # The bundled tokenizer, trained once, is shared rather than retrained in every fresh worker home.
           "MOBILEBERT_JAX_CACHE": os.environ.get("MOBILEBERT_JAX_CACHE") or
           os.path.join(os.path.expanduser("~"), ".cache", "mobilebert_jax")}
    train_args = ["--", "--config=experiments/teacher_ib_bert_large.py:smoke", f"--workdir={run}",
                  f"--config.total_steps={TOTAL}", f"--config.checkpoint.every_steps={EVERY}",
                  "--config.eval.num_batches=0", "--config.log_every=2"]
    try:
        out = tpu_run("start", *train_args, env=env).stdout
        assert "does not exist: creating it" in out and out.count("venv up to date") == 2
        pids = _pids(root)
        assert len(pids) == 2
        _wait(lambda: os.path.isdir(os.path.join(run, "checkpoints", str(EVERY))) or not all(map(_alive, pids)),
              f"checkpoint {EVERY}")
        assert all(map(_alive, pids)), "a worker exited before its first checkpoint"
        subprocess.run(["gcloud", "fake-preempt", "pod"], env=env, check=True)  # every process killed at once
        _wait(lambda: not any(map(_alive, pids)), "the killed workers to go")
        done = sorted(int(n) for n in os.listdir(os.path.join(run, "checkpoints")) if n.isdigit())
        assert done and done[-1] < TOTAL

        out = tpu_run("start", *train_args, env=env).stdout  # the same command again
        assert "is PREEMPTED: deleting and creating it again" in out
        pids = _pids(root)
        _wait(lambda: not any(map(_alive, pids)), "the resumed run to finish")

        tpu_run("fetch-logs", logs, env=env)
        names = sorted(os.listdir(logs))
        assert names == ["train-pod-w-0.log", "train-pod-w-1.log"]
        log0 = open(os.path.join(logs, names[0])).read()
        assert f"resumed from step {done[-1]}" in log0, log0[-3000:]
        assert f"step {TOTAL}/{TOTAL}" in log0 and "done: checkpoints in" in log0
        assert "process 0 of 2" in log0
        # Only process 0 reports progress.
        assert "resumed from step" not in open(os.path.join(logs, names[1])).read()
        assert os.path.isdir(os.path.join(run, "checkpoints", str(TOTAL)))
        status = tpu_run("status", env=env).stdout
        assert "READY" in status and status.count("not running") == 2
    finally:
        subprocess.run(["gcloud", "compute", "tpus", "tpu-vm", "delete", "pod", "--zone=local-a", "--quiet"], env=env,
                       capture_output=True)
    with open(os.path.join(root, "calls.jsonl")) as f:
        verbs = [json.loads(line)[3] if json.loads(line)[0] == "compute" else json.loads(line)[0] for line in f]
    assert verbs[:10] == ["describe", "create", "scp", "ssh", "ssh", "fake-preempt",
                          "describe", "delete", "create", "scp"]
