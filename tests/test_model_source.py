"""The one model reader: trainer workdirs, step directories, params directories, HF directories and hub ids;
mismatches are named."""

from __future__ import annotations

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mobilebert_jax import checkpointing, get_preset, model_source
from mobilebert_jax.errors import ConfigError
from mobilebert_jax.modeling import MobileBertForPreTraining
from mobilebert_jax.train.step import TrainState
from test_distill_stage import SEQ, build, make_config, save_teacher, tiny_models


def _params(cfg, seed=0):
    return nn.unbox(MobileBertForPreTraining(cfg).init(jax.random.key(seed), jnp.zeros((1, SEQ), jnp.int32))["params"])


def _abstract(cfg):
    one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    shapes = jax.eval_shape(lambda: _params(cfg))
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=one), shapes)


def _read_checked(spec, expected, abstract):
    """What the distillation stage does with its teacher: open, check against the config, read onto shardings."""
    source = model_source.open_source(spec, "config.distill.teacher")
    model_source.check_architecture(source, expected, model_source.flat_shapes(abstract), "config.distill.teacher",
                                    "config.teacher_model")
    return model_source.read(source, abstract)


def write_trainer_checkpoint(workdir, cfg, params, step=7) -> None:
    """What the trainer leaves in a workdir: checkpoints/<step>/{state, config} (optimizer state included)."""
    config = ml_collections.ConfigDict(dict(model=cfg.to_dict(), stage="teacher_pretraining"))
    state = TrainState(step=jnp.asarray(step, jnp.int32), params=params,
                       opt_state={"mu": jax.tree.map(jnp.zeros_like, params)})
    with checkpointing.Checkpointer(str(workdir / "checkpoints"), every_steps=1, keep_last=2, async_save=False,
                                    config=config) as ckpt:
        ckpt.save(step, state, force=True)
        ckpt.wait()


def test_reads_a_trainer_workdir_its_step_directory_and_a_params_directory(tmp_path):
    teacher_cfg, _ = tiny_models()
    params = _params(teacher_cfg, seed=3)
    write_trainer_checkpoint(tmp_path / "run", teacher_cfg, params)
    save_teacher(tmp_path / "native", teacher_cfg, seed=3)
    expected = jax.tree.map(lambda x: np.asarray(x) * 3.0, params)  # save_teacher scales the init by 3
    for path, want in ((tmp_path / "run", params), (tmp_path / "run" / "checkpoints" / "7", params),
                       (tmp_path / "native", expected)):
        got = _read_checked(str(path), teacher_cfg, _abstract(teacher_cfg))
        jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), got, want)


@pytest.mark.parametrize("kind", ["trainer", "native"])
def test_a_teacher_of_another_architecture_fails_naming_the_parameter(tmp_path, kind):
    teacher_cfg, student_cfg = tiny_models()
    other = teacher_cfg.replace(intra_bottleneck_size=96)
    if kind == "trainer":
        write_trainer_checkpoint(tmp_path / "teacher", other, _params(other))
    else:
        save_teacher(tmp_path / "teacher", other)
    c = make_config("progressive", str(tmp_path / "teacher"), teacher_cfg, student_cfg)
    with pytest.raises(ConfigError) as e:
        build(c)
    message = str(e.value)
    assert "config.distill.teacher=" in message and "does not match config.teacher_model" in message
    assert re.search(r"parameter 'mobilebert/encoder/layer_0/\S+' has shape \(\d+, 96\) in the checkpoint, "
                     r"but config.teacher_model expects \(\d+, 128\)", message), message


def test_same_shapes_other_function_fails_naming_the_field(tmp_path):
    teacher_cfg, student_cfg = tiny_models()
    save_teacher(tmp_path / "teacher", teacher_cfg.replace(hidden_act="relu"))
    c = make_config("progressive", str(tmp_path / "teacher"), teacher_cfg, student_cfg)
    expected = "hidden_act='relu', but config.teacher_model.hidden_act='gelu_new'"
    with pytest.raises(ConfigError, match=re.escape(expected)):
        build(c)


def test_missing_and_extra_parameters_are_named(tmp_path):
    teacher_cfg, student_cfg = tiny_models(layers=2)
    save_teacher(tmp_path / "deeper", teacher_cfg.replace(num_hidden_layers=3))
    source = model_source.open_source(str(tmp_path / "deeper"), "config.distill.teacher")
    with pytest.raises(ConfigError, match=r"parameter 'mobilebert/encoder/layer_2/\S+' \(shape \(\d+(, \d+)?\)\) is "
                                          r"in the checkpoint but not in the model config.teacher_model describes"):
        model_source.check_architecture(source, teacher_cfg, model_source.flat_shapes(_abstract(teacher_cfg)),
                                   "config.distill.teacher", "config.teacher_model")


def test_student_init_is_checked_against_the_student_config(tmp_path):
    teacher_cfg, student_cfg = tiny_models()
    save_teacher(tmp_path / "teacher", teacher_cfg)
    other_student = student_cfg.replace(intermediate_size=48)
    write_trainer_checkpoint(tmp_path / "student", other_student, _params(other_student))
    c = make_config("pd", str(tmp_path / "teacher"), teacher_cfg, student_cfg, student_init=str(tmp_path / "student"))
    with pytest.raises(ConfigError, match=r"config.distill.student_init=.* does not match config.model: parameter "
                                          r"'mobilebert/encoder/layer_0/\S+' has shape"):
        build(c)


def test_not_a_checkpoint(tmp_path):
    teacher_cfg, student_cfg = tiny_models()
    c = make_config("progressive", str(tmp_path), teacher_cfg, student_cfg)
    with pytest.raises(ConfigError, match="config.distill.teacher=.*holds none of a trainer workdir"):
        build(c)
    c.distill.teacher = ""
    with pytest.raises(ConfigError, match="config.distill.teacher is required"):
        build(c)


def test_copied_parts_must_fit(tmp_path):
    teacher_cfg, student_cfg = tiny_models()
    save_teacher(tmp_path / "teacher", teacher_cfg)
    c = make_config("progressive", str(tmp_path / "teacher"), teacher_cfg, student_cfg.replace(embedding_size=16))
    with pytest.raises(ConfigError, match=r"copy_from_teacher: parameter '(cls|mobilebert/embeddings)/\S+' has shape"):
        build(c)


def test_presets_match_the_reference_widths():
    """The paper's pair is comparable layer by layer: same inter-block width and heads."""
    from mobilebert_jax.distill.layers import check_comparable

    check_comparable(get_preset("mobilebert"), get_preset("ib_bert_large"), features=True, attention=True, logits=True)


def write_vocab(path, size: int) -> str:
    """A WordPiece vocab.txt of `size` tokens: the BERT special tokens, then lowercase words."""
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "sat", "on", "mat", "."]
    words += [f"w{i}" for i in range(size - len(words))]
    path.write_text("\n".join(words) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def hf_model_dir(tmp_path_factory):
    from hf_reference import hf_config, randomize_, transformers

    path = tmp_path_factory.mktemp("hf_model")
    model = transformers.MobileBertForPreTraining(hf_config(get_preset("mobilebert_test")))
    randomize_(model)
    model.save_pretrained(path)
    write_vocab(path / "vocab.txt", get_preset("mobilebert_test").vocab_size)
    return path


def test_an_hf_directory_is_a_source_with_its_vocabulary(hf_model_dir):
    from mobilebert_jax import convert

    source = model_source.open_source(str(hf_model_dir), "config.init_checkpoint")
    assert source.kind == "hf_dir" and source.tokenizer["kind"] == "wordpiece"
    assert source.tokenizer["vocab_size"] == source.config.vocab_size == 512
    _, want = convert.from_hf(str(hf_model_dir))
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, np.asarray(b)), model_source.read(source), want)


def _hub_cache(root, repo_id: str, files_from) -> None:
    """The layout huggingface_hub leaves after a download: refs/main -> snapshots/<commit>/files."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = root / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for f in files_from.iterdir():
        (snapshot / f.name).write_bytes(f.read_bytes())


def test_an_hf_hub_id_reads_the_cache_offline_and_a_missing_one_says_what_to_do(hf_model_dir, tmp_path):
    import os
    import subprocess
    import sys

    cache = tmp_path / "hub"
    _hub_cache(cache, "google/mobilebert-tiny", hf_model_dir)
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(cache), HF_HOME=str(tmp_path / "hf_home"))
    run = lambda *a: subprocess.run([sys.executable, "-m", "mobilebert_jax.convert", *a],  # noqa: E731
                                    capture_output=True, text=True, env=env)
    r = run("from-hf", "--input", "google/mobilebert-tiny", "--output", str(tmp_path / "params"))
    assert r.returncode == 0, r.stderr
    source = model_source.open_source(str(tmp_path / "params"), "test")
    assert source.kind == "params_dir" and source.tokenizer["kind"] == "wordpiece"
    # ... and back to HF with its tokenizer: transformers' fill-mask pipeline runs on the export.
    r = run("to-hf", "--input", str(tmp_path / "params"), "--output", str(tmp_path / "exported"))
    assert r.returncode == 0 and "tokenizer: vocab.txt" in r.stdout, r.stderr
    from hf_reference import transformers

    filled = transformers.pipeline("fill-mask", model=str(tmp_path / "exported"))("the cat sat on the [MASK] .")
    assert len(filled) == 5 and all(0 <= p["token"] < 512 for p in filled)
    r = run("from-hf", "--input", "google/mobilebert-uncased", "--output", str(tmp_path / "other"))
    assert r.returncode == 1, r.stderr
    assert r.stderr.startswith("FATAL config error: --input='google/mobilebert-uncased': not a local directory, and "
                               "the HF hub model 'google/mobilebert-uncased' is not in the HF cache"), r.stderr
    assert "HF_HUB_OFFLINE is set" in r.stderr and "pass a local directory" in r.stderr
