"""What the experiment files share (big_vision's configs/common.py): the `:arg` parser, the optimizer at TF1's
settings, the trainer's sections, the pretraining data.

The library's readers (optim/config.py, checkpointing.read_config, distill/config.py, data/config.py) define
what each field means and check it, but hold no values: the values every stage starts from are here, the
distillation stages' in distill_common.py, the README job's in pipeline.py.

Not an experiment itself (no get_config). An experiment file loads it by path, since experiments/ is a
directory of files named on the command line rather than a package:

    common = experiment_config.load_module(os.path.join(os.path.dirname(__file__), "common.py"))
"""

from __future__ import annotations

from typing import Any

import ml_collections

from mobilebert_jax.errors import ConfigError

# config.mesh.shape (data, fsdp, tensor), -1 = every device. Paper scale shards parameters and optimizer state
# over every core for the same FLOPs (docs/scale_out.md); the CPU-sized smoke runs replicate them.
FSDP = (1, -1, 1)
DATA_PARALLEL = (-1, 1, 1)


def parse_arg(arg: str | None, where: str, **spec: Any) -> ml_collections.ConfigDict:
    """The `:arg` of `--config=experiments/X.py:arg` as the fields of `spec`, each defaulting to its value there.

    `arg` is comma-separated `name=value` parts; a bare `name` sets a bool field (`:task=rte,smoke`). A value
    is converted to the type of its default; anything else is a ConfigError naming `where` and the fields.
    """
    usage = ",".join(name if isinstance(default, bool) else f"{name}=..." for name, default in spec.items())
    values = dict(spec)
    for part in filter(None, (arg or "").split(",")):
        name, has_value, value = part.partition("=")
        if name not in spec:
            raise ConfigError(f"{where}: unknown argument {part!r} in {arg!r}; it takes {usage}")
        default = spec[name]
        if isinstance(default, bool):
            if has_value and value.lower() not in ("true", "false"):
                raise ConfigError(f"{where}: argument {part!r}: {name} is true or false (a bare {name} is true)")
            values[name] = not has_value or value.lower() == "true"
        elif not has_value:
            raise ConfigError(f"{where}: argument {part!r} needs a value ({name}=...)")
        else:
            try:
                values[name] = type(default)(value)
            except ValueError:
                raise ConfigError(f"{where}: argument {part!r}: not of type {type(default).__name__}") from None
    return ml_collections.ConfigDict(values)


def optimizer(name: str, lr: float) -> ml_collections.ConfigDict:
    """config.optimizer: `name` (lamb | adamw) at peak rate `lr`, TF1's settings otherwise (REFERENCE section 5).

    A constant rate, no groups, no exclusions; a stage sets its schedule (`c.optimizer.schedule.kind = ...`).
    Every field is present, so any of them can be overridden (`--config.optimizer.mu_dtype=bfloat16`).
    """
    placeholder = ml_collections.config_dict.placeholder
    return ml_collections.ConfigDict(dict(
        name=name,
        lr=lr,  # peak learning rate
        b1=0.9,
        b2=0.999,
        eps=1e-6,
        bias_correction=False,  # TF1's LAMB and AdamW never debias the moments
        weight_decay=0.01,  # never applied to norms and biases
        clip_norm=1.0,  # global-norm clipping; 0 or None turns it off
        mu_dtype=placeholder(str),  # e.g. "bfloat16" to halve the first moment's memory
        schedule=dict(
            kind="constant",
            warmup_steps=0,
            warmup_fraction=placeholder(float),  # fine-tuning's "10% warmup"; excludes warmup_steps
            total_steps=placeholder(int),
            end_lr=0.0,
            power=1.0,  # only warmup_polynomial_decay
            decay_origin="warmup_end",
        ),
        # name -> {pattern, multiplier, reset_state_when_zero}; see optim/builder.py.
        groups=ml_collections.ConfigDict(),
        # Regexes of parameter paths that are not optimized at all (no state, zero update, outside the clip).
        exclude=(),
    ))


def checkpoint(every_steps: int, keep_last: int) -> ml_collections.ConfigDict:
    """config.checkpoint: a save every `every_steps`, the newest `keep_last` kept, written in the background."""
    return ml_collections.ConfigDict(dict(
        every_steps=every_steps,
        keep_last=keep_last,
        keep_steps=(),  # milestones kept forever, e.g. the end of each distillation stage
        keep_period=ml_collections.config_dict.placeholder(int),  # also keep every N-th step
        async_save=True,
    ))


def trainer_sections(c: ml_collections.ConfigDict, *, mesh: tuple[int, int, int], checkpoint_every: int,
                     keep_last: int, **eval_fields: Any) -> None:
    """Sets config.mesh, .checkpoint, .eval (`eval_fields`) and .profile, the trainer's sections of every stage.

    Profiling is off; `--config.profile.start_step=100 --config.profile.num_steps=5` traces five steps.
    """
    c.mesh = ml_collections.ConfigDict(dict(shape=mesh))
    c.checkpoint = checkpoint(checkpoint_every, keep_last)
    c.eval = ml_collections.ConfigDict(eval_fields)
    c.profile = ml_collections.ConfigDict(dict(start_step=-1, num_steps=0))


def pretraining_data(max_seq_length: int, max_predictions_per_seq: int) -> ml_collections.ConfigDict:
    """config.data of the pretraining and distillation stages (data/config.py says what each field means): BERT's
    sentence pairs and masking (REFERENCE section 4). `corpus` and `tokenizer` have no value: a run must name them
    (an empty one is a FATAL config error), and `embedded_corpus` sets the embedded ones for the :smoke configs.
    `python -m mobilebert_jax.data.prepare` takes the same section, from the same config file."""
    return ml_collections.ConfigDict(dict(
        # --- what to read ---
        # A file, directory or glob (local or gs://), tfds:NAME[:split], or builtin:python_docs; several joined
        # by commas. Required.
        corpus="",
        corpus_format="bert",  # local files: "bert" | "paragraphs" | "wikitext" (see data/sources/text_files.py)
        tfds_data_dir="",  # "" is TFDS's default data_dir
        tfds_text_field="text",
        max_line_bytes=100_000,  # longer lines are skipped and counted
        # --- how to tokenize ---
        # A WordPiece vocab.txt (the released MobileBERT one: bert-uncased-vocab.txt), a SentencePiece
        # .model (local or gs://), or builtin:python_docs_sentencepiece (trained on the embedded corpus, cached;
        # offline). Required.
        tokenizer="",
        # --- instances (fixed at preparation; changing one needs a new prepared_dir) ---
        prepared_dir="",  # where `prepare` writes and the loader reads; "" trains from WORKDIR/data
        max_seq_length=max_seq_length,
        short_seq_prob=0.1,
        dupe_factor=1,  # passes over the corpus with fresh segmentations; BERT used 10 with static masks
        held_out_fraction=0.01,  # of documents, kept for the eval split
        # ArrayRecord files per split; 0 scales them with the corpus: one per 2**26 tokens x dupe_factor (about
        # 128 MiB; 64 train shards for the paper's 4.3B tokens), which also bounds the instance pass's workers.
        num_shards=0,
        seed=12345,  # the preparation's random choices
        # Processes for the in-process `prepare`: 0 one per core, 1 inline (starting a process costs seconds,
        # so inline is faster for a small corpus such as the embedded one). Past one machine: --runner (Beam).
        prepare_workers=0,
        unit_bytes=64 << 20,  # local files are read in groups of about this size, a larger file in ranges of it
        tfds_examples_per_unit=20_000,
        # --- masking (at load time; may change between runs) ---
        max_predictions_per_seq=max_predictions_per_seq,  # MobileBERT's: 20 at 512 tokens
        masked_lm_prob=0.15,
        whole_word_masking=False,
        dynamic_masking=True,  # fresh masks each epoch; False: an example keeps its masks forever
        # --- loader ---
        loader_workers=0,  # grain worker processes; 0 reads in this process's threads
        verify_checksums=False,  # True: a start also checks each prepared shard's sha256 (reads every byte)
        loader_threads=4,
        prefetch_buffer_size=64,
    ))


def embedded_corpus(data: ml_collections.ConfigDict) -> None:
    """The Python-docs corpus and SentencePiece vocabulary shipped in the package: smoke runs need no download."""
    data.corpus = "builtin:python_docs"
    data.tokenizer = "builtin:python_docs_sentencepiece"
    data.num_shards = 4
    data.prepare_workers = 1  # about 1 MB of text: starting worker processes would cost more than it saves
