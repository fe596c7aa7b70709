"""Every command-line entry point: `--help` prints the usage and every flag it defines, exits 0, does nothing else.

Found by reading the sources (any module with `if __name__ == "__main__"`), so a new tool is covered without
editing this file. The commands run as subprocesses, four at a time, once per test session.
"""

from __future__ import annotations

import concurrent.futures
import os
import re
import shutil
import subprocess
import sys

import pytest

from limits import HANG_S

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_DEFINE = re.compile(r"""flags\.DEFINE_\w+\(\s*["'](\w+)["']""")
_MAIN = re.compile(r"""^if __name__ == ["']__main__["']:""", re.M)
_ARGUMENT = re.compile(r"""add_argument\(\s*["'](--\w+)["']""")


def _entry_points() -> dict[str, list[str]]:
    """name -> command, for every module and benchmark script with a __main__ block."""
    out = {}
    for base in ("mobilebert_jax", "benchmarks"):
        for root, _, files in os.walk(os.path.join(REPO, base)):
            for name in sorted(files):
                path = os.path.join(root, name)
                if not name.endswith(".py") or not _MAIN.search(open(path).read()):
                    continue
                rel = os.path.relpath(path, REPO)
                if base == "benchmarks":
                    out[rel] = [sys.executable, rel]
                else:
                    module = rel[:-3].replace(os.sep, ".").removesuffix(".__main__")
                    out[module] = [sys.executable, "-m", module]
    script = shutil.which("mobilebert-jax", path=os.path.dirname(sys.executable)) or shutil.which("mobilebert-jax")
    if script:
        out["mobilebert-jax"] = [script]
    return out


ENTRY_POINTS = _entry_points()


def _source(name: str) -> str:
    if name == "mobilebert-jax":
        name = "mobilebert_jax.main"
    if name.endswith(".py"):
        path = os.path.join(REPO, name)
    else:
        path = os.path.join(REPO, *name.split("."))
        path = os.path.join(path, "__main__.py") if os.path.isdir(path) else path + ".py"
    return open(path).read()


@pytest.fixture(scope="session")
def helps() -> dict[str, subprocess.CompletedProcess]:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, env.get("PYTHONPATH")) if p)

    def run(command):
        return subprocess.run([*command, "--help"], cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=HANG_S)

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        return dict(zip(ENTRY_POINTS, pool.map(run, ENTRY_POINTS.values())))


def test_every_tool_is_found():
    for expected in ("mobilebert_jax.main", "mobilebert_jax.convert", "mobilebert_jax.export",
                     "mobilebert_jax.quantization", "mobilebert_jax.evaluate", "mobilebert_jax.data.prepare",
                     "mobilebert_jax.plot", "mobilebert_jax.tools.install_libtpu", "mobilebert_jax.tools.aot_compile",
                     "mobilebert_jax.tools.sweep"):
        assert expected in ENTRY_POINTS


@pytest.mark.parametrize("name", sorted(ENTRY_POINTS))
def test_help_prints_usage_and_every_flag_and_exits_0(helps, name):
    r = helps[name]
    assert r.returncode == 0, f"{name} --help exited {r.returncode}:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    assert "Traceback" not in r.stderr, r.stderr
    source = _source(name)
    flags = set(_DEFINE.findall(source)) | {f[2:] for f in _ARGUMENT.findall(source)}
    if "define_scale_flags()" in source:
        flags |= {"teacher_steps", "seq_len"}
    missing = sorted(f for f in flags if f"--{f}" not in r.stdout and f"--[no]{f}" not in r.stdout)
    assert not missing, f"{name} --help does not mention {missing}:\n{r.stdout}"
    assert len(r.stdout.strip().splitlines()) >= 2, r.stdout


@pytest.mark.parametrize("name", [n for n in ("mobilebert_jax.main", "mobilebert-jax") if n in ENTRY_POINTS])
def test_main_help_explains_config(helps, name):
    out = helps[name].stdout
    assert "--config=experiments/" in out and "--config.FIELD" in out and "--workdir" in out
    assert "--teacher_steps" in out and "-v 0" in out


def test_help_does_nothing_else(helps):
    # install_libtpu's help once started the 684 MB download; aot_compile's names the supported install.
    out = helps["mobilebert_jax.tools.install_libtpu"]
    assert "installed" not in out.stdout and "already in" not in out.stdout and "pip" not in out.stderr
    assert "install_libtpu" in helps["mobilebert_jax.tools.aot_compile"].stdout
    assert ".[aot]" not in helps["mobilebert_jax.tools.aot_compile"].stdout


def test_file_only_records_stay_off_the_terminal():
    import logging

    from mobilebert_jax import cli

    def record(**extra):
        r = logging.LogRecord("x", logging.INFO, cli.__file__, 1, "shards done", None, None)
        r.__dict__.update(extra)
        return r

    terminal = cli._ProjectInfo()
    assert terminal.filter(record()) and not terminal.filter(record(**cli.FILE_ONLY))
