"""What a run takes from the model it starts from (each Stage's inherit), a diverged run's stop, and total_steps overrides."""

from __future__ import annotations

import dataclasses
import json
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import synthetic_training
from mobilebert_jax import checkpointing, convert, experiment_config, get_preset, model_source, optim
from mobilebert_jax.errors import ConfigError
from mobilebert_jax.data import tokenizer_record
from mobilebert_jax.data.tokenizers import load_tokenizer
from mobilebert_jax.modeling import MobileBertForPreTraining
from mobilebert_jax.distill.stage import DISTILLATION
from mobilebert_jax.finetune.stage import GLUE
from mobilebert_jax.errors import NonFiniteLossError
from mobilebert_jax.train.stage import Stage
from mobilebert_jax.train.trainer import train
from test_model_source import write_vocab

BUILTIN = "builtin:python_docs_sentencepiece"  # 4,000 pieces


def _params_dir(path, vocab_size: int, tokenizer_spec: str | None) -> str:
    cfg = get_preset("mobilebert_test", vocab_size=vocab_size, num_hidden_layers=1)
    params = nn.unbox(MobileBertForPreTraining(cfg).init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"])
    convert.save_params(str(path), cfg, params)
    if tokenizer_spec:
        tokenizer_record.save(load_tokenizer(tokenizer_spec), str(path))
    return str(path)


def _glue_config(init_checkpoint: str, vocab: str = "") -> ml_collections.ConfigDict:
    c = experiment_config.load_experiment("experiments/finetune_glue.py:task=rte,smoke")
    c.init_checkpoint = init_checkpoint
    c.data.tokenizer = vocab
    return c


def test_fine_tuning_takes_the_init_checkpoints_model_and_tokenizer(tmp_path):
    init = _params_dir(tmp_path / "distilled", 4000, BUILTIN)
    c = _glue_config(init)
    GLUE.inherit(c)
    assert c.model.vocab_size == 4000 and c.model.num_hidden_layers == 1
    assert c.data.tokenizer.startswith(str(tmp_path / "distilled" / "tokenizer")) and c.data.tokenizer.endswith(".model")
    assert load_tokenizer(c.data.tokenizer).content_hash == load_tokenizer(BUILTIN).content_hash
    # The same tokenizer named explicitly is accepted.
    c = _glue_config(init, vocab=BUILTIN)
    GLUE.inherit(c)
    assert c.data.tokenizer == BUILTIN


def test_a_different_tokenizer_is_refused_naming_both(tmp_path):
    init = _params_dir(tmp_path / "distilled", 4000, BUILTIN)
    other = write_vocab(tmp_path / "vocab.txt", 300)
    with pytest.raises(ConfigError) as e:
        GLUE.inherit(_glue_config(init, vocab=other))
    message = str(e.value)
    assert f"config.data.tokenizer={other!r} (wordpiece, 300 tokens" in message
    assert f"is not the tokenizer config.init_checkpoint={init!r} was trained with (sentencepiece, 4000 tokens" in message


def test_a_tokenizer_larger_than_the_model_is_refused(tmp_path):
    init = _params_dir(tmp_path / "small", 512, None)  # records no tokenizer
    with pytest.raises(ConfigError, match=r"config.data.tokenizer='builtin:python_docs_sentencepiece' has 4000 tokens but "
                                          r"the model's vocab_size=512"):
        GLUE.inherit(_glue_config(init, vocab=BUILTIN))
    with pytest.raises(ConfigError, match=r"config.data.tokenizer is empty and config.init_checkpoint=.* records no "
                                          r"tokenizer; pass --config.data.tokenizer=PATH"):
        GLUE.inherit(_glue_config(init))


def test_distillation_refuses_a_tokenizer_other_than_the_teachers(tmp_path):
    from test_distill_stage import make_config, tiny_models

    teacher_cfg, student_cfg = tiny_models()
    teacher_cfg, student_cfg = teacher_cfg.replace(vocab_size=4000), student_cfg.replace(vocab_size=4000)
    teacher = tmp_path / "teacher"
    params = nn.unbox(MobileBertForPreTraining(teacher_cfg).init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))
                      ["params"])
    convert.save_params(str(teacher), teacher_cfg, params)
    tokenizer_record.save(load_tokenizer(BUILTIN), str(teacher))
    c = make_config("pd", str(teacher), teacher_cfg, student_cfg)
    c.data.tokenizer = BUILTIN
    DISTILLATION.inherit(c)  # the same tokenizer passes
    c.data.tokenizer = write_vocab(tmp_path / "vocab.txt", 300)
    with pytest.raises(ConfigError, match=r"config.data.tokenizer=.* is not the tokenizer config.distill.teacher="):
        DISTILLATION.inherit(c)


class _DivergesAt:
    """The synthetic batches, with an infinite loss weight in batch `at` (0-based): that step's loss is NaN."""

    def __init__(self, inner, at: int):
        self.inner, self.at = inner, at

    def __iter__(self):
        return self

    def __next__(self):
        index = self.inner.index
        batch = next(self.inner)
        if index == self.at:
            batch["masked_lm_weights"] = np.full_like(batch["masked_lm_weights"], np.inf)
        return batch

    def get_state(self):
        return self.inner.get_state()

    def set_state(self, state):
        self.inner.set_state(state)


def test_a_non_finite_loss_stops_the_run_at_its_step_without_saving_it(tmp_path):
    c = synthetic_training.config(total_steps=8)  # checkpoints every 2 steps

    def read(config, workdir, spec):
        io = synthetic_training.read_synthetic(config, workdir, spec)
        return dataclasses.replace(io, train_iterator=_DivergesAt(io.train_iterator, at=4))

    with pytest.raises(NonFiniteLossError) as e:
        train(c, str(tmp_path), Stage(spec=synthetic_training.synthetic_spec, read=read))
    assert re.match(r"step 5: .*loss.* is not finite; stopped without saving this state\. Last good checkpoint: "
                    r"step 4 in .*checkpoints", str(e.value)), str(e.value)
    with checkpointing.Checkpointer(str(tmp_path / "checkpoints"), every_steps=2, keep_last=10) as ckpt:
        assert list(ckpt.all_steps()) == [2, 4]


def test_total_steps_moves_the_teacher_smoke_schedule_or_a_lone_override_is_refused():
    c = experiment_config.load_experiment("experiments/teacher_ib_bert_large.py:smoke", ["--config.total_steps=200"])
    assert c.optimizer.schedule.total_steps == 200
    schedule = optim.build_schedule(c.optimizer)
    assert float(schedule(200)) == 0.0 and float(schedule(199)) < 1e-5  # it was 9e-4 with the schedule at 1,200
    c = experiment_config.load_experiment("experiments/teacher_ib_bert_large.py:smoke",
                                          ["--config.optimizer.schedule.total_steps=300"])
    with pytest.raises(ConfigError, match=r"config.optimizer.schedule.total_steps=300 but config.total_steps=1200: "
                                          r".*change them together"):
        experiment_config.validate(c, device_count=1)


def test_a_finished_run_records_its_tokenizer(tmp_path):
    c = synthetic_training.config(total_steps=2)
    c.data = ml_collections.ConfigDict(dict(tokenizer=BUILTIN))
    train(c, str(tmp_path), synthetic_training.SYNTHETIC)
    record = json.loads((tmp_path / "tokenizer" / "tokenizer.json").read_text())
    assert record["kind"] == "sentencepiece" and record["vocab_size"] == 4000
    source = model_source.open_source(str(tmp_path), "test")
    assert source.kind == "checkpoint" and source.tokenizer == record
