"""What the experiment files share (big_vision's configs/common.py): the `:arg` parser, the trainer's sections.

Not an experiment itself (no get_config). An experiment file loads it by path, since experiments/ is a
directory of files named on the command line rather than a package:

    common = experiment_config.load_module(os.path.join(os.path.dirname(__file__), "common.py"))
"""

from __future__ import annotations

from typing import Any

import ml_collections

from mobilebert_jax import checkpointing
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


def trainer_sections(c: ml_collections.ConfigDict, *, mesh: tuple[int, int, int], checkpoint_every: int,
                     keep_last: int, **eval_fields: Any) -> None:
    """Sets config.mesh, .checkpoint, .eval (`eval_fields`) and .profile, the trainer's sections of every stage.

    Profiling is off; `--config.profile.start_step=100 --config.profile.num_steps=5` traces five steps.
    """
    c.mesh = ml_collections.ConfigDict(dict(shape=mesh))
    c.checkpoint = checkpointing.default_config()
    c.checkpoint.every_steps = checkpoint_every
    c.checkpoint.keep_last = keep_last
    c.eval = ml_collections.ConfigDict(eval_fields)
    c.profile = ml_collections.ConfigDict(dict(start_step=-1, num_steps=0))


def embedded_corpus(data: ml_collections.ConfigDict) -> None:
    """The Python-docs corpus and SentencePiece vocabulary shipped in the package: smoke runs need no download."""
    data.corpus = "builtin:python_docs"
    data.tokenizer = "builtin:python_docs_sentencepiece"
    data.num_shards = 4
