"""Every training command the docs give is complete: `launch/tpu_run.sh --help`, launch/README.md and the
experiments' docstrings.

Each command's arguments are loaded as `python -m mobilebert_jax.main` loads them (the experiment file, its `:arg`,
the overrides), and a paper-scale stage must name what it reads: a corpus and a tokenizer (a distillation may take
the tokenizer its teacher recorded), a teacher for a distillation. Running them needs a TPU pod and the corpus;
this checks what a person copying them would otherwise find out at the first FATAL line.
"""

from __future__ import annotations

import ast
import os
import re
import shlex
import subprocess
import sys

import pytest

from mobilebert_jax import experiment_config
from mobilebert_jax.data import config as data_config
from mobilebert_jax.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPERIMENTS = os.path.join(ROOT, "experiments")
PRETRAINING_STAGES = ("teacher_pretraining", "distillation")


def _joined_lines(text: str) -> list[str]:
    """Lines with backslash continuations joined, and trailing `# comments` dropped."""
    return [re.sub(r"\s+#.*$", "", line) for line in re.sub(r"\\\n\s*", " ", text).splitlines()]


def _main_args(text: str) -> list[tuple[str, list[str]]]:
    """(the command, its arguments to mobilebert_jax.main) for every training command in `text`."""
    found = []
    for line in _joined_lines(text):
        line = line.strip()
        if line.startswith("python -m mobilebert_jax.main ") and "--config" in line:  # without: the default job
            found.append((line, shlex.split(line)[3:]))
        elif line.startswith("launch/tpu_run.sh ") and " -- " in line:
            found.append((line, shlex.split(line.split(" -- ", 1)[1])))
    return found


def _tpu_run_help() -> str:
    return subprocess.run(["bash", os.path.join(ROOT, "launch", "tpu_run.sh"), "--help"], capture_output=True,
                          text=True, check=True).stdout


def _docstring(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return ast.get_docstring(ast.parse(f.read())) or ""


def _commands() -> list[tuple[str, str, list[str]]]:
    sources = {"launch/tpu_run.sh --help": _tpu_run_help()}
    with open(os.path.join(ROOT, "launch", "README.md"), encoding="utf-8") as f:
        sources["launch/README.md"] = f.read()
    for name in sorted(os.listdir(EXPERIMENTS)):
        if name.endswith(".py"):
            sources[f"experiments/{name}"] = _docstring(os.path.join(EXPERIMENTS, name))
    return [(where, command, args) for where, text in sources.items() for command, args in _main_args(text)]


COMMANDS = _commands()


def _load(args: list[str]):
    options = dict(a.split("=", 1) for a in args if a.startswith("--") and "=" in a and not a.startswith("--config."))
    if "--config" not in options or "--workdir" not in options:
        raise ConfigError("--config and --workdir are required")
    path, arg = experiment_config.split_spec(options["--config"])
    return experiment_config.load_experiment(os.path.join(ROOT, path) + arg,
                                             [a for a in args if a.startswith("--config.")])


def _check(args: list[str]) -> None:
    """The ConfigError a complete command never raises at these checks."""
    config = _load(args)
    if config.stage not in PRETRAINING_STAGES:
        return
    data = data_config.read(config.data)
    if config.stage == "distillation":
        if not config.distill.teacher:
            raise ConfigError("config.distill.teacher is required")
        data.tokenizer = data.tokenizer or "the teacher's recorded tokenizer"
    data_config.require_sources(data)


def test_the_docs_give_commands_of_every_pretraining_stage():
    stages = {_load(args).stage for _, _, args in COMMANDS}
    assert {"teacher_pretraining", "distillation", "glue_finetuning", "squad_finetuning"} <= stages
    assert {where for where, _, _ in COMMANDS} >= {"launch/tpu_run.sh --help", "launch/README.md",
                                                   "experiments/teacher_ib_bert_large.py"}


@pytest.mark.parametrize("where,command,args", COMMANDS, ids=[f"{w}:{i}" for i, (w, _, _) in enumerate(COMMANDS)])
def test_each_documented_command_is_complete(where, command, args):
    try:
        _check(args)
    except ConfigError as e:
        pytest.fail(f"{where}: {command}\n  FATAL config error: {e}")


@pytest.mark.parametrize("missing,field", [("--config.data.corpus", "config.data.corpus"),
                                           ("--config.data.tokenizer", "config.data.tokenizer")])
def test_a_paper_scale_teacher_without_its_data_is_refused(missing, field):
    args = ["--config=experiments/teacher_ib_bert_large.py", "--workdir=gs://BUCKET/runs/teacher",
            "--config.data.corpus=gs://BUCKET/corpus", "--config.data.tokenizer=gs://BUCKET/vocab.txt"]
    with pytest.raises(ConfigError, match=rf"^{re.escape(field)} is empty: give "):
        _check([a for a in args if not a.startswith(missing + "=")])
    _check(args)


def _prepare_commands() -> list[tuple[str, str, list[str]]]:
    """(where, the command, its --config arguments) of every `python -m mobilebert_jax.data.prepare` in the docs."""
    found = []
    with open(os.path.join(ROOT, "launch", "README.md"), encoding="utf-8") as f:
        sources = {"launch/README.md": f.read()}
    for name in sorted(os.listdir(EXPERIMENTS)):
        if name.endswith(".py"):
            sources[f"experiments/{name}"] = _docstring(os.path.join(EXPERIMENTS, name))
    for where, text in sources.items():
        for line in _joined_lines(text):
            if line.strip().startswith("python -m mobilebert_jax.data.prepare "):
                found.append((where, line.strip(), [a for a in shlex.split(line)[3:] if a.startswith("--config")]))
    return found


def test_paper_scale_stages_reuse_one_prepared_dir_that_a_documented_command_prepares():
    """A paper-scale pretraining or distillation command reads a gs:// prepared_dir that a documented prepare command
    (launch/README.md, the teacher's docstring) writes with the same data settings, so the data is made once, by the
    engine the docs say, and no stage prepares its own copy."""
    from mobilebert_jax.data.prepare import SETTINGS_FIELDS

    prepared = {}
    for where, command, args in _prepare_commands():
        spec = next(a.split("=", 1)[1] for a in args if a.startswith("--config="))
        path, arg = experiment_config.split_spec(spec)
        config = experiment_config.load_experiment(os.path.join(ROOT, path) + arg,
                                                   [a for a in args if a.startswith("--config.")])
        data = data_config.read(config.data)
        assert data.prepared_dir.startswith("gs://"), f"{where}: {command}"
        data_config.require_sources(data)
        prepared[data.prepared_dir] = data
    assert {where for where, _, _ in _prepare_commands()} >= {"launch/README.md", "experiments/teacher_ib_bert_large.py"}
    checked = 0
    for where, command, args in COMMANDS:
        config = _load(args)
        if config.stage not in PRETRAINING_STAGES or config.data.corpus.startswith("builtin:"):
            continue
        data = data_config.read(config.data)
        assert data.prepared_dir in prepared, f"{where}: {command}\n  reads no documented prepared_dir"
        made = prepared[data.prepared_dir]
        assert {f: data[f] for f in SETTINGS_FIELDS} == {f: made[f] for f in SETTINGS_FIELDS}, f"{where}: {command}"
        assert data.tokenizer in ("", made.tokenizer), f"{where}: {command}"
        checked += 1
    assert checked >= 8


def test_prepare_without_a_corpus_is_one_fatal_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "mobilebert_jax.data.prepare", f"--config={EXPERIMENTS}/teacher_ib_bert_large.py",
         f"--config.data.prepared_dir={tmp_path / 'data'}", "--config.data.tokenizer=gs://BUCKET/vocab.txt"],
        capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("FATAL config error: config.data.corpus is empty: give")
    assert "Traceback" not in result.stderr and not (tmp_path / "data").exists()
