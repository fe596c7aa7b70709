"""Checkpoint conversion: file formats, the command line, and errors that name the tensor."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import zipfile

import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from hf_reference import hf_config, max_abs, randomize_, torch, transformers
from mobilebert_jax import convert, get_preset, model_source
from mobilebert_jax.errors import ConfigError
from mobilebert_jax.convert import names

CONFIG = get_preset("mobilebert_test")


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("hf")
    model = transformers.MobileBertForPreTraining(hf_config(CONFIG))
    randomize_(model)
    model.save_pretrained(path)
    return path


def _copy_with(hf_dir, tmp_path, edit):
    """A copy of the HF directory whose tensors went through `edit(state)`."""
    out = tmp_path / "edited"
    out.mkdir()
    (out / "config.json").write_text((hf_dir / "config.json").read_text())
    state = load_file(str(hf_dir / "model.safetensors"))
    edit(state)
    save_file(state, str(out / "model.safetensors"))
    return out


def test_names_roundtrip_for_every_parameter(hf_dir):
    for name in load_file(str(hf_dir / "model.safetensors")):
        path, transpose = names.hf_to_flax(name)
        assert names.flax_to_hf(path) == (name, transpose)


def test_missing_tensor_is_named(hf_dir, tmp_path):
    bad = _copy_with(hf_dir, tmp_path, lambda s: s.pop("mobilebert.encoder.layer.1.ffn.2.output.dense.weight"))
    with pytest.raises(convert.CheckpointError,
                       match=r"missing tensor.*mobilebert\.encoder\.layer\.1\.ffn\.2\.output\.dense\.weight "
                             r"\(parameter mobilebert/encoder/layer_1/ffn_2/output/dense/kernel\)"):
        convert.from_hf(str(bad))


def test_wrong_shape_is_named(hf_dir, tmp_path):
    def edit(state):
        state["mobilebert.encoder.layer.0.attention.self.value.weight"] = np.zeros((32, 10), np.float32)

    bad = _copy_with(hf_dir, tmp_path, edit)
    with pytest.raises(convert.CheckpointError,
                       match=r"mobilebert\.encoder\.layer\.0\.attention\.self\.value\.weight .*has shape \(10, 32\)"):
        convert.from_hf(str(bad))


def test_unexpected_tensor_is_named(hf_dir, tmp_path):
    def edit(state):
        state["mobilebert.encoder.layer.7.output.dense.weight"] = np.zeros((4, 4), np.float32)

    bad = _copy_with(hf_dir, tmp_path, edit)
    with pytest.raises(convert.CheckpointError, match=r"does not have: \['mobilebert\.encoder\.layer\.7"):
        convert.from_hf(str(bad))


def test_unknown_files_are_refused(tmp_path, hf_dir):
    with pytest.raises(convert.CheckpointError, match="expected an HF model directory"):
        convert.from_hf(str(hf_dir / "model.safetensors"))
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text((hf_dir / "config.json").read_text())
    (empty / "weights.h5").write_text("")
    with pytest.raises(convert.CheckpointError, match=r"no weights found.*weights\.h5"):
        convert.from_hf(str(empty))


def test_pytorch_bin_without_pickle_execution(hf_dir, tmp_path):
    model = transformers.MobileBertForPreTraining.from_pretrained(hf_dir)
    state = model.state_dict()
    out = tmp_path / "bin"
    out.mkdir()
    torch.save(state, out / "pytorch_model.bin")
    loaded = convert.load_torch_bin(str(out / "pytorch_model.bin"))
    assert set(loaded) == set(state)
    for k, v in state.items():
        np.testing.assert_array_equal(loaded[k], v.numpy())
    # A transposed (non-contiguous) tensor keeps its values too.
    torch.save({"t": torch.arange(12.0).reshape(3, 4).t()}, out / "t.bin")
    np.testing.assert_array_equal(convert.load_torch_bin(str(out / "t.bin"))["t"], np.arange(12.0).reshape(3, 4).T)
    # And from_hf reads the directory through it.
    (out / "config.json").write_text((hf_dir / "config.json").read_text())
    _, params = convert.from_hf(str(out))
    assert params["cls"]["predictions"]["extra_output_weights"].shape == (32, CONFIG.vocab_size)


def test_malicious_pickle_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    path = tmp_path / "pytorch_model.bin"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps({"w": Evil()}, protocol=2))
    with pytest.raises(convert.UnsafeCheckpointError, match=r"refusing to load global (posix|os)\.system"):
        convert.load_torch_bin(str(path))
    assert not (tmp_path / "pwned").exists()


def test_teacher_export_is_refused_with_reason(tmp_path):
    from mobilebert_jax.modeling import MobileBertForPreTraining

    import jax

    c = get_preset("ib_bert_test")
    params = MobileBertForPreTraining(c).init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]
    with pytest.raises(ConfigError, match="HF MobileBERT cannot represent this config"):
        convert.to_hf(c, params, str(tmp_path / "out"))
    # Our own format holds it.
    convert.save_params(str(tmp_path / "native"), c, params)
    source = model_source.open_source(str(tmp_path / "native"), "test")
    loaded_config, loaded = source.config, model_source.read(source)
    assert loaded_config == c
    assert loaded["mobilebert"]["encoder"]["layer_1"]["attention"]["self"]["query"]["kernel"].shape == (64, 128)


def test_command_line_roundtrip(hf_dir, tmp_path):
    native, back = tmp_path / "native", tmp_path / "back"
    run = lambda *a: subprocess.run([sys.executable, "-m", "mobilebert_jax.convert", *a],  # noqa: E731
                                    capture_output=True, text=True)
    r = run("from-hf", "--input", str(hf_dir), "--output", str(native))
    assert r.returncode == 0, r.stderr
    r = run("to-hf", "--input", str(native), "--output", str(back))
    assert r.returncode == 0, r.stderr
    original = transformers.MobileBertForPreTraining.from_pretrained(hf_dir).eval()
    reloaded = transformers.MobileBertForPreTraining.from_pretrained(back).eval()
    ids = torch.tensor([[3, 4, 5, 6, 0]])
    with torch.no_grad():
        assert max_abs(original(ids).prediction_logits.numpy(), reloaded(ids).prediction_logits.numpy()) == 0.0
    r = run("to-hf", "--input", str(tmp_path / "nowhere"), "--output", str(back))
    assert r.returncode == 1 and r.stderr.splitlines()[-1].startswith("FATAL config error: --input=") and \
        "no such directory" in r.stderr
    r = run("to-hf", "--input", str(native), "--output", str(native))  # written by from-hf: not overwritten
    assert r.returncode == 1 and "already holds files this command did not write" in r.stderr, r.stderr
    r = run("from-run", "--input", str(native), "--output", str(tmp_path / "other"))
    assert r.returncode == 1 and "is a params dir; from-run takes checkpoint" in r.stderr, r.stderr
