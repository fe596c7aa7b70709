"""`convert from-tf`: MobileBERT checkpoints written by TensorFlow itself, in google-research's TF1 variable layout
and in TF2 Model Garden's object-based layout.

Each checkpoint is saved with `tf.compat.v1.train.Saver` under the names google-research's modeling.py and
run_pretraining.py give their variables (the scopes are spelled out below from those files' structure, not from the
converter), every variable random, with Adam/LAMB slots and `global_step` beside them as a training run leaves
them. The converted model is compared with a float64 NumPy forward pass that reads the checkpoint by its TF1 names
and follows TF1's equations (REFERENCE section 2): the -6 mask replacement, NoNorm, LayerNorm epsilon 1e-12.
transformers 5 has no TF1 loader for MobileBERT any more, so it cannot serve as the reference here.

The TF2 checkpoints are object graphs built here with nested `tf.train.Checkpoint`s whose keys are those that
`tf.train.Checkpoint(encoder=MobileBERTEncoder(...), masked_lm=MobileBertMaskedLM(...)).save()` writes with
tf-models-official 2.20 and tf_keras 2.21 (listed once from those libraries, which the test extra does not
install): `encoder/layer_with_weights-K/...` (0 the embeddings, 1..L the blocks, L + 1 the pooler), Keras
MultiHeadAttention's [in, heads, head_dim] kernels, and the word table saved once, under `masked_lm/embedding_table`.
Their values are the TF1 checkpoint's, reshaped, so the same TF1 reference checks them.
"""

from __future__ import annotations

import json
import math
import sys

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from mobilebert_jax import model_source  # noqa: E402
from mobilebert_jax.convert import hf, tf_checkpoint  # noqa: E402
from mobilebert_jax.convert.__main__ import convert, main  # noqa: E402
from mobilebert_jax.errors import CheckpointError, ConfigError  # noqa: E402

# bert_config.json files as google-research releases them (uncased_L-24_H-128_B-512_A-4_F-4_OPT), at toy widths.
MOBILEBERT = dict(
    attention_probs_dropout_prob=0.1, hidden_act="relu", hidden_dropout_prob=0.0, embedding_size=32,
    hidden_size=64, initializer_range=0.02, intermediate_size=48, max_position_embeddings=32,
    num_attention_heads=4, num_hidden_layers=2, type_vocab_size=2, vocab_size=97, intra_bottleneck_size=32,
    trigram_input=True, use_bottleneck=True, use_bottleneck_attention=False, key_query_shared_bottleneck=True,
    num_feedforward_networks=4, normalization_type="no_norm", classifier_activation=False)
TINY = {**MOBILEBERT, "num_feedforward_networks": 2, "key_query_shared_bottleneck": False,
        "use_bottleneck_attention": True}
MULTILINGUAL = {**MOBILEBERT, "vocab_size": 211}  # multi_cased_L-24_H-128_B-512_A-4_F-4_OPT: its own vocabulary
# The IB-BERT teacher's config leaves classifier_activation out (TF1's default: a tanh pooler).
TEACHER = {k: v for k, v in MOBILEBERT.items() if k != "classifier_activation"}
TEACHER.update(hidden_act="gelu", intra_bottleneck_size=96, intermediate_size=128, num_feedforward_networks=1,
               key_query_shared_bottleneck=False, normalization_type="layer_norm", hidden_dropout_prob=0.1)
LAYOUTS = {"mobilebert": MOBILEBERT, "tiny": TINY, "multilingual": MULTILINGUAL, "ib_bert_teacher": TEACHER}


def tf1_variables(c: dict) -> dict[str, tuple]:
    """name -> shape of every model variable TF1's BertModel and pretraining heads create for config `c`."""
    h, e, b, inter, vocab = (c["hidden_size"], c["embedding_size"], c["intra_bottleneck_size"],
                             c["intermediate_size"], c["vocab_size"])
    norm = "FakeLayerNorm" if c["normalization_type"] == "no_norm" else "LayerNorm"
    out: dict[str, tuple] = {}

    def dense(scope, n_in, n_out):
        out[f"{scope}/kernel"], out[f"{scope}/bias"] = (n_in, n_out), (n_out,)

    def norm_of(scope, n, name=norm):
        out[f"{scope}/{name}/gamma"], out[f"{scope}/{name}/beta"] = (n,), (n,)

    out["bert/embeddings/word_embeddings"] = (vocab, e)
    dense("bert/embeddings/embedding_transformation", 3 * e, h)
    out["bert/embeddings/token_type_embeddings"] = (c["type_vocab_size"], h)
    out["bert/embeddings/position_embeddings"] = (c["max_position_embeddings"], h)
    norm_of("bert/embeddings", h)
    shared_kq = c["key_query_shared_bottleneck"] and not c["use_bottleneck_attention"]
    for layer in range(c["num_hidden_layers"]):
        p = f"bert/encoder/layer_{layer}"
        dense(f"{p}/bottleneck/input/dense", h, b)
        norm_of(f"{p}/bottleneck/input", b)
        if shared_kq:
            dense(f"{p}/bottleneck/attention/dense", h, b)
            norm_of(f"{p}/bottleneck/attention", b)
        qk_in = b if (shared_kq or c["use_bottleneck_attention"]) else h
        for name, n_in in (("query", qk_in), ("key", qk_in), ("value", b if c["use_bottleneck_attention"] else h)):
            dense(f"{p}/attention/self/{name}", n_in, b)
        dense(f"{p}/attention/output/dense", b, b)
        norm_of(f"{p}/attention/output", b)
        for f in range(c["num_feedforward_networks"] - 1):
            dense(f"{p}/ffn_layer_{f}/intermediate/dense", b, inter)
            dense(f"{p}/ffn_layer_{f}/output/dense", inter, b)
            norm_of(f"{p}/ffn_layer_{f}/output", b)
        dense(f"{p}/intermediate/dense", b, inter)
        dense(f"{p}/output/dense", inter, b)
        norm_of(f"{p}/output", b)
        dense(f"{p}/output/bottleneck/dense", b, h)
        norm_of(f"{p}/output/bottleneck", h)
    if c.get("classifier_activation", True):
        dense("bert/pooler/dense", h, h)
    dense("cls/predictions/transform/dense", h, h)
    norm_of("cls/predictions/transform", h, "LayerNorm")  # a real LayerNorm even in NoNorm models
    out["cls/predictions/output_bias"] = (vocab,)
    out["cls/predictions/extra_output_weights"] = (vocab, h - e)
    out["cls/seq_relationship/output_weights"] = (2, h)
    out["cls/seq_relationship/output_bias"] = (2,)
    return out


def random_values(shapes: dict[str, tuple], seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {name: ((0.6 + 0.8 * rng.random(shape)) if name.endswith("gamma") else 0.2 * rng.standard_normal(shape))
            .astype(np.float32) for name, shape in shapes.items()}


def save_tf1(path, values: dict[str, np.ndarray], with_slots: bool = True) -> str:
    """Saves `values` as TF1 does, with Adam/LAMB slots and global_step beside the weights."""
    variables = {name: tf.Variable(v, name=name.replace("/", "_")) for name, v in values.items()}
    if with_slots:
        for name, v in values.items():
            variables[f"{name}/adam_m"] = tf.Variable(np.zeros_like(v))
            variables[f"{name}/adam_v"] = tf.Variable(np.ones_like(v))
        variables["global_step"] = tf.Variable(np.int64(1234))
    path.mkdir(parents=True, exist_ok=True)
    return tf.compat.v1.train.Saver(var_list=variables).save(None, str(path / "model.ckpt-1234"))


def model_garden_values(c: dict, v: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The TF1 values `v` under Model Garden's checkpoint keys (without `/.ATTRIBUTES/VARIABLE_VALUE`)."""
    norm = "FakeLayerNorm" if c["normalization_type"] == "no_norm" else "LayerNorm"
    heads = c["num_attention_heads"]
    d = c["intra_bottleneck_size"] // heads
    out = {"masked_lm/embedding_table": v["bert/embeddings/word_embeddings"]}

    def copy(src, dst, norm_name=norm):
        if f"{src}/kernel" in v:
            out[f"{dst}/kernel"], out[f"{dst}/bias"] = v[f"{src}/kernel"], v[f"{src}/bias"]
        else:
            out[f"{dst}/gamma"], out[f"{dst}/beta"] = v[f"{src}/{norm_name}/gamma"], v[f"{src}/{norm_name}/beta"]

    e = "encoder/layer_with_weights-0"
    copy("bert/embeddings/embedding_transformation", f"{e}/word_embedding_proj")
    out[f"{e}/type_embedding/embeddings"] = v["bert/embeddings/token_type_embeddings"]
    out[f"{e}/pos_embedding/embeddings"] = v["bert/embeddings/position_embeddings"]
    copy("bert/embeddings", f"{e}/layer_norm")
    for layer in range(c["num_hidden_layers"]):
        p, t = f"bert/encoder/layer_{layer}", f"encoder/layer_with_weights-{layer + 1}/block_layers"
        copy(f"{p}/bottleneck/input/dense", f"{t}/bottleneck_input/0")
        copy(f"{p}/bottleneck/input", f"{t}/bottleneck_input/1")
        if f"{p}/bottleneck/attention/dense/kernel" in v:
            copy(f"{p}/bottleneck/attention/dense", f"{t}/kq_shared_bottleneck/0")
            copy(f"{p}/bottleneck/attention", f"{t}/kq_shared_bottleneck/1")
        for name in ("query", "key", "value"):
            kernel = v[f"{p}/attention/self/{name}/kernel"]
            out[f"{t}/attention/0/_{name}_dense/kernel"] = kernel.reshape(kernel.shape[0], heads, d)
            out[f"{t}/attention/0/_{name}_dense/bias"] = v[f"{p}/attention/self/{name}/bias"].reshape(heads, d)
        out[f"{t}/attention/0/_output_dense/kernel"] = v[f"{p}/attention/output/dense/kernel"].reshape(heads, d, -1)
        out[f"{t}/attention/0/_output_dense/bias"] = v[f"{p}/attention/output/dense/bias"]
        copy(f"{p}/attention/output", f"{t}/attention/1")
        for f in range(c["num_feedforward_networks"]):
            src = f"{p}/ffn_layer_{f}" if f < c["num_feedforward_networks"] - 1 else p
            copy(f"{src}/intermediate/dense", f"{t}/ffn/{f}/0")
            copy(f"{src}/output/dense", f"{t}/ffn/{f}/1")
            copy(f"{src}/output", f"{t}/ffn/{f}/2")
        copy(f"{p}/output/bottleneck/dense", f"{t}/bottleneck_output/0")
        copy(f"{p}/output/bottleneck", f"{t}/bottleneck_output/2")
    if "bert/pooler/dense/kernel" in v:
        copy("bert/pooler/dense", f"encoder/layer_with_weights-{c['num_hidden_layers'] + 1}")
    copy("cls/predictions/transform/dense", "masked_lm/dense")
    copy("cls/predictions/transform", "masked_lm/layer_norm", "LayerNorm")
    out["masked_lm/extra_output_weights"] = v["cls/predictions/extra_output_weights"]
    out["masked_lm/output_bias.Sbias"] = v["cls/predictions/output_bias"]  # the weight named "output_bias/bias"
    return out


def save_object_graph(path, values: dict[str, np.ndarray]) -> str:
    """Saves `values` by tf.train.Checkpoint as nested objects named by their keys' parts (".S" is an escaped "/"),
    with an optimizer beside them as a training run leaves it."""
    tree: dict = {"optimizer": {"iter": np.int64(1234)}}
    for key, value in values.items():
        parts = [part.replace(".S", "/") for part in key.split("/")]
        node = tree
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value

    def build(node):
        return tf.train.Checkpoint(**{k: build(x) if isinstance(x, dict) else tf.Variable(x) for k, x in node.items()})

    return build(tree).save(str(path / "ckpt"))


# ---------------------------------------------------------------------------
# The float64 reference, by TF1 names.
# ---------------------------------------------------------------------------
def _gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))


def tf1_forward(c: dict, v: dict, ids, types, mask):
    g = {k: np.asarray(a, np.float64) for k, a in v.items()}
    act = {"relu": lambda x: np.maximum(x, 0), "gelu": _gelu_tanh}[c["hidden_act"]]

    def dense(x, scope):
        return x @ g[f"{scope}/kernel"] + g[f"{scope}/bias"]

    def layer_norm(x, scope):
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + 1e-12) * g[f"{scope}/LayerNorm/gamma"] + g[f"{scope}/LayerNorm/beta"]

    def norm(x, scope):
        if c["normalization_type"] == "no_norm":
            return x * g[f"{scope}/FakeLayerNorm/gamma"] + g[f"{scope}/FakeLayerNorm/beta"]
        return layer_norm(x, scope)

    e = g["bert/embeddings/word_embeddings"][ids]
    zero = np.zeros_like(e[:, :1])
    trigram = np.concatenate([np.concatenate([e[:, 1:], zero], 1), e, np.concatenate([zero, e[:, :-1]], 1)], -1)
    x = dense(trigram, "bert/embeddings/embedding_transformation")
    x = x + g["bert/embeddings/position_embeddings"][: ids.shape[1]][None]
    x = norm(x + g["bert/embeddings/token_type_embeddings"][types], "bert/embeddings")
    heads = c["num_attention_heads"]
    d = c["intra_bottleneck_size"] // heads
    m = mask[:, None, None, :].astype(np.float64)
    for layer in range(c["num_hidden_layers"]):
        p = f"bert/encoder/layer_{layer}"
        b = norm(dense(x, f"{p}/bottleneck/input/dense"), f"{p}/bottleneck/input")
        if c["use_bottleneck_attention"]:
            q_in = v_in = b
        elif c["key_query_shared_bottleneck"]:
            q_in, v_in = norm(dense(x, f"{p}/bottleneck/attention/dense"), f"{p}/bottleneck/attention"), x
        else:
            q_in = v_in = x

        def split(y):
            return y.reshape(*y.shape[:2], heads, d).transpose(0, 2, 1, 3)

        q, k = split(dense(q_in, f"{p}/attention/self/query")), split(dense(q_in, f"{p}/attention/self/key"))
        val = split(dense(v_in, f"{p}/attention/self/value"))
        s = q @ k.transpose(0, 1, 3, 2) / math.sqrt(d)
        s = s * m + (1 - m) * -6.0
        probs = np.exp(s - s.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        ctx = (probs @ val).transpose(0, 2, 1, 3).reshape(*x.shape[:2], -1)
        h = norm(dense(ctx, f"{p}/attention/output/dense") + b, f"{p}/attention/output")
        for f in range(c["num_feedforward_networks"] - 1):
            q = f"{p}/ffn_layer_{f}"
            h = norm(dense(act(dense(h, f"{q}/intermediate/dense")), f"{q}/output/dense") + h, f"{q}/output")
        h = norm(dense(act(dense(h, f"{p}/intermediate/dense")), f"{p}/output/dense") + h, f"{p}/output")
        x = norm(dense(h, f"{p}/output/bottleneck/dense") + x, f"{p}/output/bottleneck")
    pooled = np.tanh(dense(x[:, 0], "bert/pooler/dense")) if c.get("classifier_activation", True) else x[:, 0]
    u = layer_norm(act(dense(x, "cls/predictions/transform/dense")), "cls/predictions/transform")
    table = np.concatenate([g["bert/embeddings/word_embeddings"], g["cls/predictions/extra_output_weights"]], 1)
    mlm = u @ table.T + g["cls/predictions/output_bias"]
    nsp = pooled @ g["cls/seq_relationship/output_weights"].T + g["cls/seq_relationship/output_bias"]
    return x, mlm, nsp


def _write_config(tmp_path, config: dict):
    path = tmp_path / "bert_config.json"
    path.write_text(json.dumps(config, indent=2))
    return str(path)


def _inputs(vocab: int):
    rng = np.random.default_rng(7)
    ids = rng.integers(1, vocab, (2, 12)).astype(np.int32)
    types = np.concatenate([np.zeros((2, 6)), np.ones((2, 6))], 1).astype(np.int32)
    padded = np.ones((2, 12), np.int32)
    padded[1, 8:] = 0
    return ids, types, padded


def _relative_error(ours, reference) -> float:
    return float(np.abs(np.asarray(ours, np.float64) - reference).max() / np.abs(reference).max())


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_tf1_checkpoint_matches_tf1_equations(layout, tmp_path):
    c = LAYOUTS[layout]
    values = random_values(tf1_variables(c), seed=len(layout))
    prefix = save_tf1(tmp_path / "ckpt", values)
    out = tmp_path / "params"
    message = convert("from-tf", prefix, str(out), config=_write_config(tmp_path, c))
    n = len(values)
    assert f"{n} variables placed as MobileBertForPreTraining; {2 * n + 1} optimizer slots" in message

    source = model_source.open_source(str(out), "--input")
    config = source.config
    assert (config.attention_mask_mode, config.layer_norm_eps, config.outer_norm_eps) == ("replace", 1e-12, 1e-12)
    assert config.vocab_size == c["vocab_size"]
    model = hf.build_model(config, "MobileBertForPreTraining")
    params = model_source.read(source)
    ids, types, padded = _inputs(c["vocab_size"])
    for mask in (np.ones_like(padded), padded):  # a full mask, then TF1's -6 replacement on padding
        got = model.apply({"params": params}, ids, mask, types)
        seq, mlm, nsp = tf1_forward(c, values, ids, types, mask)
        for name, ours, ref in (("sequence", got["last_hidden_state"], seq), ("mlm", got["mlm_logits"], mlm),
                                ("nsp", got["nsp_logits"], nsp)):
            assert _relative_error(ours, ref) < 2e-5, (layout, name, mask.min())


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_model_garden_checkpoint_matches_tf1_equations(layout, tmp_path):
    c = {**LAYOUTS[layout], "classifier_activation": False}  # Model Garden's configs: no pooler
    values = random_values(tf1_variables(c), seed=len(layout))
    values = {k: x for k, x in values.items() if not k.startswith("cls/seq_relationship")}
    garden = model_garden_values(c, values)
    prefix = save_object_graph(tmp_path / "ckpt", garden)
    out = tmp_path / "params"
    message = convert("from-tf", prefix, str(out), config=_write_config(tmp_path, c))
    assert f"TF2 object-based checkpoint: {len(garden)} variables placed as MobileBertForMaskedLM" in message
    assert "the checkpoint has no NSP head (cls/seq_relationship)" in message

    source = model_source.open_source(str(out), "--input")
    assert source.config.attention_mask_mode == "replace" and source.config.layer_norm_eps == 1e-12
    model = hf.build_model(source.config, "MobileBertForMaskedLM")
    params = model_source.read(source)
    ids, types, padded = _inputs(c["vocab_size"])
    for mask in (np.ones_like(padded), padded):
        got = model.apply({"params": params}, ids, mask, types)
        seq, mlm, _ = tf1_forward(c, {**values, "cls/seq_relationship/output_weights": np.zeros((2, 64)),
                                      "cls/seq_relationship/output_bias": np.zeros(2)}, ids, types, mask)
        assert _relative_error(got["last_hidden_state"], seq) < 2e-5, (layout, mask.min())
        assert _relative_error(got["mlm_logits"], mlm) < 2e-5, (layout, mask.min())


def test_model_garden_keys_it_cannot_place_are_named(tmp_path):
    c = {**MOBILEBERT}
    values = random_values(tf1_variables(c), 6)
    garden = model_garden_values(c, values)
    garden["next_sentence/dense/kernel"] = np.zeros((64, 2), np.float32)
    garden["encoder/layer_with_weights-0/word_embedding/embeddings"] = garden["masked_lm/embedding_table"]
    without_mlm_table = {k: x for k, x in garden.items() if k != "masked_lm/embedding_table"}
    prefix = save_object_graph(tmp_path / "unknown", without_mlm_table)
    with pytest.raises(CheckpointError, match=r"no place in a MobileBERT.*'next_sentence/dense/kernel/\.ATTRIBUTES/"
                                              r"VARIABLE_VALUE'\]"):
        convert("from-tf", prefix, str(tmp_path / "out"), config=_write_config(tmp_path, c))
    del garden["next_sentence/dense/kernel"]
    prefix = save_object_graph(tmp_path / "twice", garden)
    with pytest.raises(CheckpointError, match=r"two variables for one parameter: encoder/layer_with_weights-0/"
                                              r"word_embedding/embeddings.* and masked_lm/embedding_table"):
        convert("from-tf", prefix, str(tmp_path / "out"), config=_write_config(tmp_path, c))


def test_a_directory_reads_its_latest_checkpoint_and_a_missing_nsp_head_is_reported(tmp_path, capsys):
    values = {k: v for k, v in random_values(tf1_variables(MOBILEBERT), 1).items()
              if not k.startswith("cls/seq_relationship")}
    save_tf1(tmp_path / "ckpt", values)
    assert main(["from-tf", f"--input={tmp_path / 'ckpt'}", f"--config={_write_config(tmp_path, MOBILEBERT)}",
                 f"--output={tmp_path / 'out'}"]) == 0
    message = capsys.readouterr().out
    assert "as MobileBertForMaskedLM" in message and "the checkpoint has no NSP head (cls/seq_relationship)" in message
    source = model_source.open_source(str(tmp_path / "out"), "--input")
    assert "seq_relationship" not in model_source.read(source)["cls"]


def test_every_unplaceable_variable_is_named_in_one_error(tmp_path):
    values = random_values(tf1_variables(MOBILEBERT), 2)
    values["teacher/bert/embeddings/word_embeddings"] = values["bert/embeddings/word_embeddings"]
    values["bert/encoder/layer_0/attention/self/query/kernel_scale"] = np.ones(3, np.float32)
    prefix = save_tf1(tmp_path / "ckpt", values)
    with pytest.raises(CheckpointError, match=r"no place in a MobileBERT.*'bert/encoder/layer_0/attention/self/"
                                              r"query/kernel_scale', 'teacher/bert/embeddings/word_embeddings'\]"):
        convert("from-tf", prefix, str(tmp_path / "out"), config=_write_config(tmp_path, MOBILEBERT))
    assert not (tmp_path / "out").exists()


def test_missing_and_misshapen_variables_are_named(tmp_path):
    values = random_values(tf1_variables(MOBILEBERT), 3)
    del values["bert/encoder/layer_1/ffn_layer_2/output/dense/kernel"]
    prefix = save_tf1(tmp_path / "missing", values)
    with pytest.raises(CheckpointError, match=r"needs parameter\(s\).*mobilebert/encoder/layer_1/ffn_2/output/"
                                              r"dense/kernel"):
        convert("from-tf", prefix, str(tmp_path / "out"), config=_write_config(tmp_path, MOBILEBERT))
    # The checkpoint of one model under the config of another: the shapes disagree, and the error says where.
    prefix = save_tf1(tmp_path / "multi", random_values(tf1_variables(MULTILINGUAL), 4))
    with pytest.raises(CheckpointError, match=r"bert/embeddings/word_embeddings has shape \(211, 32\) where the "
                                              r"config expects \(97, 32\)"):
        convert("from-tf", prefix, str(tmp_path / "out"), config=_write_config(tmp_path, MOBILEBERT))


def test_bad_inputs_are_config_errors(tmp_path, monkeypatch):
    prefix = save_tf1(tmp_path / "ckpt", random_values(tf1_variables(MOBILEBERT), 5), with_slots=False)
    with pytest.raises(ConfigError, match=r"use_qat.*not TF1 BertConfig fields"):
        convert("from-tf", prefix, str(tmp_path / "out"),
                config=_write_config(tmp_path, {**MOBILEBERT, "use_qat": True}))
    with pytest.raises(ConfigError, match="--config .*goes with from-tf"):
        convert("from-tf", prefix, str(tmp_path / "out"))
    with pytest.raises(CheckpointError, match="not a readable TF checkpoint"):
        convert("from-tf", str(tmp_path / "nothing-here"), str(tmp_path / "out"),
                config=_write_config(tmp_path, MOBILEBERT))
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # as if TensorFlow were not installed
    with pytest.raises(ConfigError, match="TensorFlow, which is not installed"):
        tf_checkpoint.read_variables(prefix)
