"""Our Flax models against HF transformers' PyTorch MobileBERT, every parameter random.

Each case imports an HF checkpoint with `convert.from_hf`, runs both models on
a batch with padded rows, and compares every hidden state and every logit
(max abs error <= 1e-5); then exports with `convert.to_hf`, reloads in
transformers and compares again.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from hf_reference import batch, hf_config, max_abs, randomize_, torch, transformers
from mobilebert_jax import convert, get_preset
from mobilebert_jax.config import MobileBertConfig

TOL = 1e-5

CONFIGS = {
    "mobilebert": get_preset("mobilebert_test"),
    "tiny": get_preset("mobilebert_tiny_test"),
    "no_opt": get_preset("mobilebert_no_opt_test"),  # layer norm + gelu
    "no_bottleneck": get_preset("bert_test"),
    # Odd: no trigram with embedding narrower than hidden, 3 FFNs, 3 heads,
    # exact-erf gelu, layer norm, a tanh pooler.
    "odd": MobileBertConfig(vocab_size=300, hidden_size=96, num_hidden_layers=3, num_attention_heads=3,
                            intermediate_size=80, embedding_size=48, intra_bottleneck_size=48, trigram_input=False,
                            num_feedforward_networks=3, normalization_type="layer_norm", hidden_act="gelu",
                            classifier_activation=True, max_position_embeddings=40, type_vocab_size=3),
    # An untied MLM decoder (HF's tie_word_embeddings=False): its own [V, E] weight.
    "untied": get_preset("mobilebert_test", tie_word_embeddings=False),
    # HF builds an unused `bottleneck.attention` here (use_bottleneck_attention wins over the shared one).
    "bottleneck_attention": get_preset("mobilebert_tiny_test", key_query_shared_bottleneck=True),
}


def _hf_outputs(model, ids, mask, types, **kw):
    with torch.no_grad():
        out = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                    token_type_ids=torch.tensor(types), output_hidden_states=True, **kw)
    return out


def _ours(arch, config, params, ids, mask, types, num_labels=2):
    model = convert.hf.build_model(config, arch, num_labels)
    return model.apply({"params": params}, jnp.asarray(ids), attention_mask=jnp.asarray(mask),
                       token_type_ids=jnp.asarray(types), deterministic=True, output_hidden_states=True)


def _compare_hidden(hf_out, ours):
    assert len(hf_out.hidden_states) == len(ours["hidden_states"])
    for i, (a, b) in enumerate(zip(hf_out.hidden_states, ours["hidden_states"])):
        assert max_abs(a.numpy(), b) <= TOL, f"hidden state {i}"


def _roundtrip(tmp_path, arch, hf_model, config, ids, mask, types, pairs, num_labels=2):
    """Import, compare, export, reload, compare. `pairs` maps HF output name -> ours."""
    hf_dir = tmp_path / "hf"
    hf_model.save_pretrained(hf_dir)
    imported_config, params = convert.from_hf(str(hf_dir))
    hf_out = _hf_outputs(hf_model, ids, mask, types)
    ours = _ours(arch, imported_config, params, ids, mask, types, num_labels)
    _compare_hidden(hf_out, ours)
    for hf_name, our_name in pairs.items():
        err = max_abs(getattr(hf_out, hf_name).numpy(), ours[our_name])
        assert err <= TOL, f"{hf_name}: max abs error {err}"

    out_dir = tmp_path / "exported"
    convert.to_hf(imported_config, params, str(out_dir))
    reloaded = getattr(transformers, arch).from_pretrained(out_dir, attn_implementation="eager").eval()
    re_out = _hf_outputs(reloaded, ids, mask, types)
    for hf_name in pairs:
        assert max_abs(getattr(re_out, hf_name).numpy(), getattr(hf_out, hf_name).numpy()) <= TOL
    return imported_config


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_pretraining_parity(tmp_path, name):
    config = CONFIGS[name]
    hf_model = transformers.MobileBertForPreTraining(hf_config(config))
    randomize_(hf_model, seed=1)
    ids, mask, types = batch(config)
    imported = _roundtrip(tmp_path, "MobileBertForPreTraining", hf_model, config, ids, mask, types,
                          {"prediction_logits": "mlm_logits", "seq_relationship_logits": "nsp_logits"})
    # The import reproduces HF's semantics, quirks included.
    assert imported.attention_mask_mode == "additive"
    assert imported.embedding_and_output_norm_eps == 1e-5


def test_gathered_mlm_equals_full_mlm(tmp_path):
    config = CONFIGS["mobilebert"]
    hf_model = transformers.MobileBertForPreTraining(hf_config(config))
    randomize_(hf_model)
    hf_model.save_pretrained(tmp_path)
    config, params = convert.from_hf(str(tmp_path))
    ids, mask, types = batch(config)
    model = convert.hf.build_model(config, "MobileBertForPreTraining")
    full = model.apply({"params": params}, ids, attention_mask=mask, token_type_ids=types)["mlm_logits"]
    positions = np.array([[0, 3, 5], [1, 1, 2], [7, 0, 4]])
    gathered = model.apply({"params": params}, ids, attention_mask=mask, token_type_ids=types,
                           masked_lm_positions=positions)["mlm_logits"]
    assert gathered.shape == (3, 3, config.vocab_size)
    np.testing.assert_allclose(gathered, np.take_along_axis(np.asarray(full), positions[..., None], axis=1),
                               atol=1e-6)


@pytest.mark.parametrize("name", ["mobilebert", "odd"])
def test_sequence_classification_parity(tmp_path, name):
    config = CONFIGS[name]
    hf_model = transformers.MobileBertForSequenceClassification(hf_config(config, num_labels=3))
    randomize_(hf_model, seed=2)
    ids, mask, types = batch(config)
    _roundtrip(tmp_path, "MobileBertForSequenceClassification", hf_model, config, ids, mask, types,
               {"logits": "logits"}, num_labels=3)


@pytest.mark.parametrize("name", ["tiny", "no_bottleneck"])
def test_question_answering_parity(tmp_path, name):
    config = CONFIGS[name]
    hf_model = transformers.MobileBertForQuestionAnswering(hf_config(config))
    randomize_(hf_model, seed=3)
    ids, mask, types = batch(config)
    _roundtrip(tmp_path, "MobileBertForQuestionAnswering", hf_model, config, ids, mask, types,
               {"start_logits": "start_logits", "end_logits": "end_logits"})


@pytest.mark.parametrize("name", ["no_opt"])
def test_token_classification_parity(tmp_path, name):
    config = CONFIGS[name]
    hf_model = transformers.MobileBertForTokenClassification(hf_config(config, num_labels=5))
    randomize_(hf_model, seed=4)
    ids, mask, types = batch(config)
    hf_dir = tmp_path / "hf"
    hf_model.save_pretrained(hf_dir)
    imported, params = convert.from_hf(str(hf_dir))
    ours = _ours("MobileBertForTokenClassification", imported, params, ids, mask, types, num_labels=5)
    hf_out = _hf_outputs(hf_model, ids, mask, types)
    _compare_hidden(hf_out, ours)
    assert max_abs(hf_out.logits.numpy(), ours["logits"]) <= TOL
    convert.to_hf(imported, params, str(tmp_path / "out"), architecture="MobileBertForTokenClassification")
    reloaded = transformers.MobileBertForTokenClassification.from_pretrained(tmp_path / "out").eval()
    assert max_abs(_hf_outputs(reloaded, ids, mask, types).logits.numpy(), hf_out.logits.numpy()) <= TOL


def test_multiple_choice_parity(tmp_path):
    config = CONFIGS["odd"]
    hf_model = transformers.MobileBertForMultipleChoice(hf_config(config))
    randomize_(hf_model, seed=5)
    ids, mask, types = batch(config, batch_size=4)
    ids, mask, types = (x.reshape(2, 2, -1) for x in (ids, mask, types))
    hf_dir = tmp_path / "hf"
    hf_model.save_pretrained(hf_dir)
    imported, params = convert.from_hf(str(hf_dir))
    model = convert.hf.build_model(imported, "MobileBertForMultipleChoice")
    ours = model.apply({"params": params}, ids, attention_mask=mask, token_type_ids=types)
    with torch.no_grad():
        hf_logits = hf_model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                             token_type_ids=torch.tensor(types)).logits.numpy()
    assert ours["logits"].shape == (2, 2)
    assert max_abs(hf_logits, ours["logits"]) <= TOL


def test_parity_check_is_sensitive(tmp_path):
    """The tolerance above would catch a wrong mask convention or a small parameter slip."""
    config = CONFIGS["mobilebert"]
    hf_model = transformers.MobileBertForPreTraining(hf_config(config))
    randomize_(hf_model, seed=1)
    hf_model.save_pretrained(tmp_path)
    imported, params = convert.from_hf(str(tmp_path))
    ids, mask, types = batch(config)
    reference = _hf_outputs(hf_model, ids, mask, types).prediction_logits.numpy()

    wrong_mask = convert.hf.build_model(imported.replace(attention_mask_mode="replace"), "MobileBertForPreTraining")
    logits = wrong_mask.apply({"params": params}, ids, attention_mask=mask, token_type_ids=types)["mlm_logits"]
    assert max_abs(reference, logits) > 10 * TOL

    query = params["mobilebert"]["encoder"]["layer_1"]["attention"]["self"]["query"]
    query["bias"] = query["bias"] + 1e-3
    model = convert.hf.build_model(imported, "MobileBertForPreTraining")
    logits = model.apply({"params": params}, ids, attention_mask=mask, token_type_ids=types)["mlm_logits"]
    assert max_abs(reference, logits) > 2 * TOL


@pytest.mark.parametrize("use_bottleneck", [True, False])
@pytest.mark.parametrize("use_bottleneck_attention", [True, False])
@pytest.mark.parametrize("key_query_shared_bottleneck", [True, False])
@pytest.mark.parametrize("tie_word_embeddings", [True, False])
def test_every_config_hf_can_run_imports_exactly_or_is_refused_naming_the_field(
        tmp_path, use_bottleneck, use_bottleneck_attention, key_query_shared_bottleneck, tie_word_embeddings):
    from mobilebert_jax.errors import ConfigError

    flags = dict(use_bottleneck=use_bottleneck, use_bottleneck_attention=use_bottleneck_attention,
                 key_query_shared_bottleneck=key_query_shared_bottleneck, tie_word_embeddings=tie_word_embeddings)
    base = get_preset("mobilebert_test", num_hidden_layers=1, num_feedforward_networks=1)
    hf_cfg = hf_config(base, **flags)
    hf_model = transformers.MobileBertForPreTraining(hf_cfg)
    randomize_(hf_model, seed=2)
    ids, mask, types = batch(base)
    try:
        hf_out = _hf_outputs(hf_model, ids, mask, types)
    except RuntimeError:
        pytest.skip("transformers builds this config but cannot run it (query/key widths disagree)")
    hf_model.save_pretrained(tmp_path)
    try:
        config, params = convert.from_hf(str(tmp_path))
    except (ConfigError, convert.CheckpointError) as e:
        assert any(field in str(e) for field in flags), str(e)
        return
    ours = _ours("MobileBertForPreTraining", config, params, ids, mask, types)
    assert max_abs(hf_out.prediction_logits.numpy(), ours["mlm_logits"]) <= TOL
