"""Bad input a person can make, tried for real: each gives one line `FATAL <kind> error: ...`, exit code 1.

Each case builds its bad input under tmp_path and runs the code a CLI runs: in-process inside
`cli.errors_are_fatal()` (cheap) or, where the case is about the command line itself, as a subprocess. The
table in docs/errors.md is this file's output; after changing a message, rewrite it with

    MOBILEBERT_WRITE_ERRORS_DOC=1 python -m pytest -q tests/test_errors.py

and the test fails while the two differ.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import subprocess
import sys
import zipfile
from contextlib import redirect_stderr

import numpy as np
import pytest
from safetensors.numpy import save_file

from limits import HANG_S
from mobilebert_jax import cli, get_preset

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = os.path.join(REPO, "docs", "errors.md")
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "a", "cat", "sat", "on", "mat", "."]
SENTENCES = "The cat sat on the mat.\nA cat sat.\n\nThe mat sat on a cat.\nThe cat sat.\n"


def _vocab(tmp, lines=VOCAB):
    path = tmp / "vocab.txt"
    path.write_text("".join(f"{w}\n" for w in lines))
    return str(path)


def _prepare(tmp, corpus, vocab=None):
    from data_fixtures import data_config
    from mobilebert_jax.data.prepare import prepare

    prepare(data_config(corpus=str(corpus), tokenizer=vocab or _vocab(tmp), max_seq_length=32,
                        max_predictions_per_seq=5), str(tmp / "prepared"))


def _prepare_into(tmp, out):
    from data_fixtures import data_config
    from mobilebert_jax.data.prepare import prepare

    prepare(data_config(corpus=str(_corpus(tmp, SENTENCES.encode())), tokenizer=_vocab(tmp), max_seq_length=32,
                        max_predictions_per_seq=5), str(out))


def _load_damaged(tmp):
    """Prepared data whose first train shard was cut short after preparation, loaded as a stage does."""
    from data_fixtures import data_config
    from mobilebert_jax.data.loader import make_pretraining_loader
    from mobilebert_jax.data.prepare import prepare

    config = data_config(corpus=str(_corpus(tmp, (SENTENCES * 20).encode())), tokenizer=_vocab(tmp),
                         max_seq_length=32, max_predictions_per_seq=5, prepared_dir=str(tmp / "prepared"))
    with redirect_stderr(io.StringIO()):  # its progress bars
        manifest = prepare(config, config.prepared_dir)
    shard = tmp / "prepared" / manifest["splits"]["train"]["shards"][0]
    shard.write_bytes(shard.read_bytes()[:40])
    make_pretraining_loader(config, split="train", global_batch_size=2, process_index=0, process_count=1, seed=0)


def _corpus(tmp, content: bytes, name="corpus.txt"):
    path = tmp / name
    path.write_bytes(content)
    return path


def _hf_dir(tmp, tensors: dict | None = None, raw: bytes | None = None):
    hf = tmp / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps(get_preset("mobilebert_tiny").to_hf_dict()))
    if raw is not None:
        (hf / "model.safetensors").write_bytes(raw)
    else:
        save_file(tensors, str(hf / "model.safetensors"))
    return str(hf)


def _from_hf(path):
    from mobilebert_jax.convert.hf import from_hf

    from_hf(path)


def _from_tf(tmp, config: dict | None = None, variables: dict | None = None, prefix: str | None = None):
    """`convert from-tf` on a TF1 checkpoint of `variables`, saved by TensorFlow, under a toy bert_config.json."""
    from mobilebert_jax.convert.__main__ import convert

    bert_config = tmp / "bert_config.json"
    bert_config.write_text(json.dumps(config or dict(vocab_size=97, hidden_size=64, num_hidden_layers=1,
                                                      num_attention_heads=4, intermediate_size=48)))
    if variables is not None:
        import tensorflow as tf

        saved = {name: tf.Variable(value) for name, value in variables.items()}
        prefix = tf.compat.v1.train.Saver(var_list=saved).save(None, str(tmp / "ckpt" / "model.ckpt-1"))
    convert("from-tf", prefix, str(tmp / "out"), config=str(bert_config))


def _truncated_safetensors(tmp):
    good = tmp / "good.safetensors"
    save_file({"w": np.zeros((64, 64), np.float32)}, str(good))
    return _hf_dir(tmp, raw=good.read_bytes()[:100])


def _malicious_bin(tmp):
    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp / "pwned"),))

    hf = tmp / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps(get_preset("mobilebert_tiny").to_hf_dict()))
    with zipfile.ZipFile(hf / "pytorch_model.bin", "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps({"w": Evil()}, protocol=2))
    return str(hf)


def _word_embeddings(cfg, dtype=np.float32, value=0.0):
    return np.full((cfg.vocab_size, cfg.embedding_size), value, dtype)


def _glue(tmp, text):
    from mobilebert_jax.finetune import glue

    path = tmp / "train.tsv"
    path.write_text(text)
    glue.label_array(glue.get_task("sst2"), glue.read_tsv(glue.get_task("sst2"), str(path)))


def _squad(tmp, answer_start):
    from mobilebert_jax.finetune import squad_data

    data = {"version": "1.1", "data": [{"title": "t", "paragraphs": [{"context": "The cat sat on the mat.", "qas": [
        {"id": "q1", "question": "Who sat?", "answers": [{"text": "cat", "answer_start": answer_start}]}]}]}]}
    path = tmp / "train-v1.1.json"
    path.write_text(json.dumps(data))
    squad_data.read_squad_json(str(path))


def _validate(tmp, *overrides):
    import jax

    from mobilebert_jax import experiment_config

    config = experiment_config.load_experiment("experiments/teacher_ib_bert_large.py:smoke", list(overrides))
    experiment_config.validate(config, jax.device_count())


def _experiment_without(tmp, section, field):
    """The smoke teacher's experiment file with config.SECTION.FIELD left out, loaded and validated as main does."""
    import jax

    from mobilebert_jax import experiment_config

    experiment_config.validate(experiment_config.load_experiment(_partial_teacher(tmp, section, field)),
                               jax.device_count())


def _stage_without(tmp, section, field):
    """The same, built by the pretraining stage (its pure part, what the trainer and the AOT compiler build first)."""
    from mobilebert_jax import experiment_config
    from mobilebert_jax.pretraining.stage import PRETRAINING

    PRETRAINING.spec(experiment_config.load_experiment(_partial_teacher(tmp, section, field)))


def _partial_teacher(tmp, section, field) -> str:
    """An experiment file: the smoke teacher's with config.SECTION.FIELD left out."""
    path = tmp / "partial.py"
    path.write_text(f"from mobilebert_jax.experiment_config import load_module\n"
                    f"teacher = load_module({os.path.join(REPO, 'experiments', 'teacher_ib_bert_large.py')!r})\n"
                    f"def get_config(arg=None):\n"
                    f"    c = teacher.get_config('smoke')\n"
                    f"    del c.{section}[{field!r}]\n"
                    f"    return c\n")
    return str(path)


def _longer_than_positions(tmp, stage):
    """A stage's spec with config.data.max_seq_length above the model's max_position_embeddings."""
    from mobilebert_jax import experiment_config
    from mobilebert_jax.distill.stage import DISTILLATION
    from mobilebert_jax.pretraining.stage import PRETRAINING

    if stage == "pretraining":
        config = experiment_config.load_experiment("experiments/teacher_ib_bert_large.py:smoke", [
            f"--config.data.corpus={_corpus(tmp, SENTENCES.encode())}", f"--config.data.tokenizer={_vocab(tmp)}",
            "--config.data.max_seq_length=32", "--config.model.max_position_embeddings=16",
            f"--config.data.prepared_dir={tmp / 'data'}"])
        PRETRAINING.spec(config)
    else:  # before the teacher is read or data prepared
        config = experiment_config.load_experiment("experiments/distill_pd.py:smoke",
                                                   ["--config.model.max_position_embeddings=64"])
        DISTILLATION.spec(config)


def _evaluate(tmp, stage=None, raw=None):
    from mobilebert_jax import evaluate

    if stage or raw:
        (tmp / "config.json").write_text(raw or json.dumps({"stage": stage}))
    evaluate.evaluate_run(str(tmp))


def _without_onnx():
    """The ONNX exporter imported where the onnx package is not installed."""
    import importlib

    hidden = {k: sys.modules.pop(k) for k in list(sys.modules)
              if k == "onnx" or k.startswith("onnx.") or k == "mobilebert_jax.export.onnx_export"}
    sys.modules["onnx"] = None  # import onnx raises ImportError
    try:
        importlib.import_module("mobilebert_jax.export.onnx_export")
    finally:
        del sys.modules["onnx"]
        sys.modules.update(hidden)


def _restore_another_model(tmp):
    """Checkpoints of a 4-wide parameter restored as an 8-wide one: what a resume does after config.json was edited."""
    import jax
    import jax.numpy as jnp

    from mobilebert_jax import checkpointing

    with checkpointing.Checkpointer(str(tmp / "checkpoints"), every_steps=1, keep_last=1) as ckpt:
        ckpt.save(1, {"w": jnp.zeros((4,))}, force=True)
        ckpt.wait()
        sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        ckpt.restore({"w": jax.ShapeDtypeStruct((8,), jnp.float32, sharding=sharding)})


def _plot(tmp, text=None):
    from mobilebert_jax import plot

    if text is not None:
        (tmp / "metrics.jsonl").write_text(text)
    plot.plot_run(str(tmp))


def _fake_run(tmp):
    """What makes a directory a training workdir to the commands that write: config.json and checkpoints/."""
    run = tmp / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"stage": "glue_finetuning"}))
    return run


def _convert(*argv):
    from mobilebert_jax.convert.__main__ import main

    main(list(argv))


def _foreign_dir(tmp):
    out = tmp / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine\n")
    return out


def _train_sentencepiece(tmp, *argv):
    from absl import flags

    from mobilebert_jax.data import train_sentencepiece

    if "model_prefix" not in flags.FLAGS:
        train_sentencepiece.define_flags()
    flags.FLAGS.unparse_flags()
    flags.FLAGS(["train_sentencepiece", *argv])
    train_sentencepiece.main([])


TINY = get_preset("mobilebert_tiny")
WE = "mobilebert.embeddings.word_embeddings.weight"

# (what was tried, kind, a part of the message, how): `how` is fn(tmp) in-process, or ["module", args...] with
# "{tmp}" replaced, run as `python -m module args`.
CASES = [
    # Configuration
    ("main: `--config` file that does not exist", "config", "experiments/nope.py' not found",
     ["mobilebert_jax.main", "--config=experiments/nope.py", "--workdir={tmp}/w"]),
    ("main: `--config.total_steps=-5`", "config", "config.total_steps=-5: must be a positive whole number",
     ["mobilebert_jax.main", "--config=experiments/teacher_ib_bert_large.py:smoke", "--config.total_steps=-5",
      "--workdir={tmp}/w"]),
    ("main: `--config` without `--workdir`", "config", "--workdir is required with --config",
     lambda tmp: _run_main(["--config=experiments/teacher_ib_bert_large.py:smoke"])),
    ("main: pipeline flag with `--config`", "config", "--teacher_steps: pipeline settings",
     lambda tmp: _run_main(["--config=experiments/teacher_ib_bert_large.py:smoke", "--teacher_steps=3",
                            f"--workdir={tmp}"])),
    ("override of a field that does not exist", "config", "has no field 'totl_steps'",
     lambda tmp: _validate(tmp, "--config.totl_steps=5")),
    ("`--config.log_every=0`", "config", "config.log_every=0: must be a positive whole number",
     lambda tmp: _validate(tmp, "--config.log_every=0")),
    ("experiment file that leaves out a field the library holds no value for", "config",
     "config.optimizer is missing required field(s) ['eps']: set config.optimizer.eps",
     lambda tmp: _experiment_without(tmp, "optimizer", "eps")),
    ("experiment file that leaves out a data field", "config",
     "config.data is missing required field(s) ['masked_lm_prob']: set config.data.masked_lm_prob",
     lambda tmp: _stage_without(tmp, "data", "masked_lm_prob")),
    ("global batch not divisible by the data-parallel devices", "config", "batch_size",
     lambda tmp: _validate(tmp, "--config.batch_size=3", "--config.mesh.shape=(-1, 1, 1)")),
    ("`--config.optimizer.lr=nan`", "config", "config.optimizer.lr=nan: must be a finite number",
     lambda tmp: _validate(tmp, "--config.optimizer.lr=nan")),
    ("`--config.optimizer.lr=-0.001`", "config", "config.optimizer.lr=-0.001: must be positive",
     lambda tmp: _validate(tmp, "--config.optimizer.lr=-0.001")),
    ("microbatches that do not divide the batch", "config", "config.microbatches=3 does not divide",
     lambda tmp: _validate(tmp, "--config.microbatches=3")),
    ("eval batch the devices cannot split", "config", "config.eval.batch_size=12 is not divisible by data=8",
     lambda tmp: _validate(tmp, "--config.eval.batch_size=12", "--config.mesh.shape=(-1, 1, 1)")),
    ("pretraining: sequences longer than the model's positions", "config",
     "config.data.max_seq_length=32 exceeds config.model.max_position_embeddings=16",
     lambda tmp: _longer_than_positions(tmp, "pretraining")),
    ("distillation: sequences longer than the student's positions", "config",
     "config.data.max_seq_length=128 exceeds config.model.max_position_embeddings=64",
     lambda tmp: _longer_than_positions(tmp, "distillation")),
    # Pretraining data (data.prepare and the pretraining stage)
    ("corpus path that does not exist", "data", "nowhere.txt",
     lambda tmp: _prepare(tmp, tmp / "nowhere.txt")),
    ("data.prepare CLI: corpus path that does not exist", "data", "nowhere.txt",
     ["mobilebert_jax.data.prepare", "--config=experiments/teacher_ib_bert_large.py:smoke",
      "--config.data.corpus={tmp}/nowhere.txt", "--config.data.tokenizer={tmp}/vocab.txt",
      "--config.data.prepared_dir={tmp}/out"]),
    ("data.prepare CLI: no prepared_dir to write to", "config", "config.data.prepared_dir is empty",
     ["mobilebert_jax.data.prepare", "--config=experiments/teacher_ib_bert_large.py:smoke"]),
    ("data.prepare CLI: a fine-tuning config", "config", "stage (glue_finetuning) reads no pretraining corpus",
     ["mobilebert_jax.data.prepare", "--config=experiments/finetune_glue.py:task=rte,smoke"]),
    ("empty corpus file", "data", "yielded no documents",
     lambda tmp: _prepare(tmp, _corpus(tmp, b""))),
    ("binary corpus file", "data", "yielded no documents",
     lambda tmp: _prepare(tmp, _corpus(tmp, bytes(range(256)) * 8))),
    ("corpus file that is not UTF-8", "data", "yielded no documents",
     lambda tmp: _prepare(tmp, _corpus(tmp, "caf\xe9 sat on the mat.\n".encode("latin-1")))),
    ("corpus whose only line is 20 MB", "data", "yielded no documents",
     lambda tmp: _prepare(tmp, _corpus(tmp, b"cat " * 5_000_000 + b"\n"))),
    ("vocabulary file that does not exist", "data", "vocabulary file not found",
     lambda tmp: _prepare(tmp, _corpus(tmp, SENTENCES.encode()), vocab=str(tmp / "none.txt"))),
    ("empty vocabulary file", "data", "vocab",
     lambda tmp: _prepare(tmp, _corpus(tmp, SENTENCES.encode()), vocab=_vocab(tmp, []))),
    ("vocabulary with a duplicate entry", "data", "cat",
     lambda tmp: _prepare(tmp, _corpus(tmp, SENTENCES.encode()), vocab=_vocab(tmp, VOCAB + ["cat"]))),
    ("prepared data with a train shard cut short", "data", "prepared data damaged: <tmp>/prepared/train-00000-of-",
     lambda tmp: _load_damaged(tmp)),
    # Fine-tuning data
    ("GLUE train.tsv without its label column", "data", "examples have no label (first at <tmp>/train.tsv:2)",
     lambda tmp: _glue(tmp, "sentence\nthe cat sat\n")),
    ("empty GLUE TSV", "data", "empty file",
     lambda tmp: _glue(tmp, "")),
    ("GLUE TSV with only a header", "data", "train.tsv: no examples after line 1",
     lambda tmp: _glue(tmp, "sentence\tlabel\n")),
    ("GLUE row with an unknown label", "data", "label '7' is not one of",
     lambda tmp: _glue(tmp, "sentence\tlabel\nthe cat\t7\n")),
    ("SQuAD answer outside its context", "data", "is not at answer_start=40",
     lambda tmp: _squad(tmp, 40)),
    ("SQuAD answer_start pointing at other text", "data", "is not at answer_start=0",
     lambda tmp: _squad(tmp, 0)),
    # Checkpoints and conversion
    ("convert from-hf: truncated model.safetensors", "checkpoint", "not a readable safetensors file",
     ["mobilebert_jax.convert", "from-hf", "--input={hf_truncated}", "--output={tmp}/out"]),
    ("convert from-hf: pytorch_model.bin whose pickle runs code", "checkpoint", "refusing to load global",
     lambda tmp: _from_hf(_malicious_bin(tmp))),
    ("convert from-hf: int32 weight tensor", "checkpoint", f"tensor {WE} has dtype int32",
     lambda tmp: _from_hf(_hf_dir(tmp, {WE: _word_embeddings(TINY, np.int32)}))),
    ("convert from-hf: NaN in a weight tensor", "checkpoint", f"tensor {WE} has ",
     lambda tmp: _from_hf(_hf_dir(tmp, {WE: _word_embeddings(TINY, value=np.nan)}))),
    ("convert from-hf: directory that does not exist", "checkpoint", "expected an HF model directory",
     lambda tmp: _from_hf(str(tmp / "nowhere"))),
    ("convert from-tf: checkpoint prefix that does not exist", "checkpoint", "not a readable TF checkpoint",
     lambda tmp: _from_tf(tmp, prefix=str(tmp / "model.ckpt-1"))),
    ("convert from-tf: a variable that is no MobileBERT parameter", "checkpoint",
     "no place in a MobileBERT of this config",
     lambda tmp: _from_tf(tmp, variables={"bert/encoder/layer_0/attention/self/query/quant_max": np.float32(6)})),
    ("convert from-tf: bert_config.json with a field TF1 BERT does not have", "config", "not TF1 BertConfig fields",
     lambda tmp: _from_tf(tmp, config={"vocab_size": 97, "use_qat": True}, prefix=str(tmp / "model.ckpt-1"))),
    ("convert to-hf: directory without a model", "config", "no such directory",
     ["mobilebert_jax.convert", "to-hf", "--input={tmp}/nowhere", "--output={tmp}/out"]),
    # Nothing overwritten
    ("convert to-hf: `--output` the run it reads", "config", "is inside the training workdir",
     lambda tmp: _convert("to-hf", f"--input={_fake_run(tmp)}", f"--output={tmp / 'run'}")),
    ("convert: `--output` a directory holding other files", "config",
     "already holds files this command did not write (notes.txt)",
     lambda tmp: _convert("to-hf", f"--input={_fake_run(tmp)}", f"--output={_foreign_dir(tmp)}")),
    ("train_sentencepiece: a model file that exists", "config", "sp.model already exists",
     lambda tmp: _train_sentencepiece(tmp, "--corpus=builtin:python_docs",
                                      f"--model_prefix={_corpus(tmp, b'x', 'sp.model').with_suffix('')}")),
    ("export: `--output` that exists", "config", "vocab.txt already exists; choose another name, or pass --overwrite",
     ["mobilebert_jax.export", "--params={tmp}/nowhere", "--output={tmp}/vocab.txt", "--format=tflite"]),
    ("data.prepare: `prepared_dir` holding other files", "config",
     "config.data.prepared_dir='<tmp>/out' already holds files this command did not write (notes.txt); choose a "
     "new or empty directory",
     lambda tmp: _prepare_into(tmp, _foreign_dir(tmp))),
    # Evaluation, quantization, export and plots of a run
    ("evaluate: workdir without a run", "file", "config.json",
     lambda tmp: _evaluate(tmp)),
    ("evaluate: a pretraining workdir", "config", "is not a fine-tuning run",
     lambda tmp: _evaluate(tmp, "teacher_pretraining")),
    ("evaluate: `--batch_size=0`", "usage", "flag --batch_size=0: 0 is not a positive integer",
     ["mobilebert_jax.evaluate", "--workdir={tmp}", "--batch_size=0"]),
    ("evaluate: a run whose config.json is not JSON", "config", "not valid JSON",
     lambda tmp: _evaluate(tmp, raw="{stage: glue")),
    ("export to `.onnx` without the `export` extra", "config", "ONNX export needs the `export` extra",
     lambda tmp: _without_onnx()),
    ("resume onto checkpoints of another model (an edited config.json)", "checkpoint",
     "holds another model than this config describes", lambda tmp: _restore_another_model(tmp)),
    ("quantization: workdir without a run", "file", "config.json",
     ["mobilebert_jax.quantization", "--workdir={tmp}/nowhere"]),
    ("plot: `--out` naming an existing file", "config", "already exists; choose another name, or pass --overwrite",
     ["mobilebert_jax.plot", "{tmp}", "--out={tmp}/vocab.txt"]),
    ("plot: workdir without metrics.jsonl", "data", "metrics.jsonl: not found",
     lambda tmp: _plot(tmp)),
    ("plot: metrics.jsonl with a record that has no step", "data", "metrics.jsonl, line 2: not a metrics record",
     lambda tmp: _plot(tmp, '{"step": 1, "loss": 2}\n{"loss": 1}\n')),
]


def _run_main(argv):
    from mobilebert_jax import main

    main.FLAGS.unparse_flags()
    main.main(main._parse(["main", *argv]))


def _fatal_line(case, tmp) -> tuple[int, str]:
    _, _, _, how = case
    if callable(how):
        err = io.StringIO()
        with pytest.raises(SystemExit) as exit_info, redirect_stderr(err):
            with cli.errors_are_fatal():
                how(tmp)
        return exit_info.value.code, err.getvalue()
    fill = {"tmp": str(tmp)}
    if any("{hf_truncated}" in a for a in how):
        fill["hf_truncated"] = _truncated_safetensors(tmp)
    _vocab(tmp)
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, env.get("PYTHONPATH")) if p)
    r = subprocess.run([sys.executable, "-m", how[0], *(a.format(**fill) for a in how[1:])], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=HANG_S)
    return r.returncode, r.stderr


_RESULTS: dict[str, str] = {}


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_fatal_line(case, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    what, kind, part, _ = case
    code, stderr = _fatal_line(case, tmp_path)
    assert "Traceback" not in stderr, stderr
    fatal = [line for line in stderr.splitlines() if line.startswith("FATAL ")]
    assert code == 1 and len(fatal) == 1, f"exit {code}:\n{stderr[-3000:]}"
    assert fatal[0].startswith(f"FATAL {kind} error: " if kind else "FATAL "), fatal[0]
    assert part in _shown(stderr, tmp_path), stderr
    _RESULTS[what] = _shown(fatal[0], tmp_path)


def _shown(line: str, tmp) -> str:
    line = line.replace(str(tmp), "<tmp>").replace(REPO + os.sep, "")
    return line if len(line) <= 300 else line[:297] + "..."


def test_docs_table_lists_every_case():
    """Runs after the cases (pytest keeps file order); compares, or rewrites, docs/errors.md's table."""
    if len(_RESULTS) != len(CASES):
        pytest.skip("run with the cases above (the whole file) to check the table")
    rows = ["| bad input | message (paths shortened to `<tmp>`) |", "|---|---|"]
    for what, *_ in CASES:
        message = _RESULTS[what].replace("|", "\\|")
        rows.append(f"| {what} | `{message}` |")
    table = "\n".join(rows) + "\n"
    begin, end = "<!-- errors table: begin -->\n", "<!-- errors table: end -->"
    text = open(DOC).read()
    current = text[text.index(begin) + len(begin):text.index(end)]
    if os.environ.get("MOBILEBERT_WRITE_ERRORS_DOC"):
        with open(DOC, "w") as f:
            f.write(text.replace(begin + current + end, begin + table + end))
        return
    assert current == table, "docs/errors.md is out of date; rerun with MOBILEBERT_WRITE_ERRORS_DOC=1"


def test_ctrl_c_outside_the_training_loop_is_one_line(tmp_path):
    """Ctrl-C while a command works (data preparation, a conversion): one line, exit 130, no traceback."""
    import signal

    script = ("import time\nfrom mobilebert_jax import cli\n"
              "def main(argv):\n    print('READY', flush=True)\n    time.sleep(60)\n"
              "cli.run_absl(main, doc='a command')\n")
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, env.get("PYTHONPATH")) if p)
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "READY"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=HANG_S)
    assert proc.returncode == 130, err
    assert err.strip() == "interrupted: stopped before the end; rerun the same command to continue", err


SMOKE = "--config=experiments/teacher_ib_bert_large.py:smoke"


@pytest.mark.parametrize("module,args,unknown,closest", [
    ("mobilebert_jax.main", [SMOKE, "--work_dir=x"], "work_dir", "workdir"),
    ("mobilebert_jax.data.prepare", [SMOKE, "--prepare_workerz=2"], "prepare_workerz", None),
    ("mobilebert_jax.convert", ["to-hf", "--input=a", "--output=b", "--ouptut=c"], "--ouptut", "--output"),
    ("mobilebert_jax.evaluate", ["--workdir=x", "--batchsize=3"], "batchsize", "batch_size"),
    ("mobilebert_jax.quantization", ["--workdir=x", "--batchsize=3"], "batchsize", "batch_size"),
    ("mobilebert_jax.export", ["--output=x.tflite", "--batchsize=1"], "batchsize", "batch_size"),
    ("mobilebert_jax.tools.sweep", ["sweep.py", "list", "--dryrun"], "--dryrun", "--dry_run"),
    ("mobilebert_jax.plot", ["x", "--outt=y.png"], "outt", "out"),
    ("mobilebert_jax.tools.aot_compile", [SMOKE, "--topolgy=v5e:2x2"], "topolgy", "topology"),
    ("mobilebert_jax.data.train_sentencepiece", ["--corpus=x", "--model_prefx=y"], "model_prefx", "model_prefix"),
])
def test_an_unknown_flag_is_a_usage_error_naming_the_closest_real_one(module, args, unknown, closest):
    """Every entry point: one line `FATAL usage error: ...` naming the flag (and the closest real one), exit 1."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, env.get("PYTHONPATH")) if p)
    r = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=HANG_S)
    assert "Traceback" not in r.stderr, r.stderr
    fatal = [line for line in r.stderr.splitlines() if line.startswith("FATAL")]
    assert r.returncode == 1 and len(fatal) == 1 and fatal[0].startswith("FATAL usage error: "), r.stderr
    assert unknown in fatal[0] and (closest is None or closest in fatal[0].split(unknown, 1)[1]), fatal[0]
