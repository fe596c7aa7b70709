"""What a run takes from the model it starts from, settled before anything compiles and recorded in its workdir.

- Fine-tuning from `config.init_checkpoint`: `config.model` becomes the
  checkpoint's model config, so the resolved config (and every checkpoint's
  copy of it) describes the trained model by itself: evaluation, quantization
  and export read only the run's workdir, even once the init checkpoint is gone.
- The tokenizer: an empty `config.data.vocab` means the init checkpoint's
  recorded tokenizer; an explicit one must be the same tokenizer. Distillation's
  `config.data.tokenizer` must be the teacher's and the student_init's.
- Every run writes its tokenizer to `WORKDIR/tokenizer/` (data/tokenizer_record.py).
"""

from __future__ import annotations

import jax
import ml_collections

from mobilebert_jax import model_source
from mobilebert_jax.config import MobileBertConfig
from mobilebert_jax.data import tokenizer_record
from mobilebert_jax.data.tokenizers import load_tokenizer

FINETUNING_STAGES = ("glue_finetuning", "squad_finetuning")


def tokenizer_field(config: ml_collections.ConfigDict) -> str:
    """The config field that names the run's tokenizer ("data.vocab" or "data.tokenizer")."""
    return "vocab" if config.stage in FINETUNING_STAGES else "tokenizer"


def resolve(config: ml_collections.ConfigDict) -> None:
    """Fills in, in place, the model and tokenizer that `config` takes from the models it starts from."""
    if "data" not in config:
        return  # a stage without a data config (tests' synthetic batches) has no tokenizer
    field = tokenizer_field(config)
    spec = config.data.get(field) or ""
    with config.unlocked():
        if config.stage in FINETUNING_STAGES:
            source = None
            if config.get("init_checkpoint"):
                source = model_source.open_source(config.init_checkpoint, "config.init_checkpoint")
                config.model = ml_collections.ConfigDict(source.config.to_dict())
            elif not spec:
                spec = config.data.get("scratch_vocab") or ""
            overrides = dict(config.get("model_overrides", {}) or {})
            vocab_size = MobileBertConfig.from_dict(config.model.to_dict()).replace(**overrides).vocab_size
            config.data[field] = tokenizer_record.choose(
                spec, f"config.data.{field}", source.tokenizer if source else None,
                source.tokenizer_dir if source else None,
                f"config.init_checkpoint={config.init_checkpoint!r}", vocab_size, "the model's vocab_size")
        elif config.stage == "distillation":
            for name in ("teacher", "student_init"):
                if config.distill.get(name):
                    where = f"config.distill.{name}"
                    source = model_source.open_source(config.distill[name], where)
                    model = config.teacher_model if name == "teacher" else config.model
                    spec = tokenizer_record.choose(
                        spec, f"config.data.{field}", source.tokenizer, source.tokenizer_dir,
                        f"{where}={config.distill[name]!r}", model.vocab_size,
                        f"config.{'teacher_model' if name == 'teacher' else 'model'}.vocab_size")
            if spec:
                config.data[field] = spec


def record_tokenizer(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Copies the run's tokenizer into `workdir/tokenizer/` (process 0)."""
    spec = config.data.get(tokenizer_field(config)) if "data" in config else None
    if spec and jax.process_index() == 0:
        tokenizer_record.save(load_tokenizer(spec), workdir)


def run_tokenizer(workdir: str, config: ml_collections.ConfigDict) -> str:
    """The tokenizer spec of a finished run: its own recorded copy, else the config's (runs made before records)."""
    from etils import epath

    record = tokenizer_record.read(epath.Path(workdir))
    if record is not None:
        return str(epath.Path(workdir) / tokenizer_record.DIRNAME / record["file"])
    return config.data.get(tokenizer_field(config)) if "data" in config else None
