"""Stand-in inputs, so that a stage's Task can be built where its real inputs are not.

A compiled train step depends on the shapes a config implies, never on the
text it reads or the values of the parameters it loads. The ahead-of-time
compiler therefore builds the stage's Task through the trainer's own
builder (so the compiled step is the real one), after pointing the config's
inputs at stand-ins in a scratch directory:

  data               the bundled corpus and tokenizer (prepared in a few
                     seconds, no download); max_seq_length and
                     max_predictions_per_seq, which fix the batch shapes, stay;
  parameter sources  for each field in PARAMETER_SOURCES the config has
                     (the distillation teacher; a student to start from, if set), a
                     parameter directory (convert/native.py layout) with the
                     architecture and every shape the builder checks, whose
                     values are a sparse file that is never read;
  batch size         one example: the builder's loader only has to show what
                     a batch holds; the compile uses the real global size.
"""

from __future__ import annotations

import json
import math
import os
import struct

import jax
import jax.numpy as jnp
import ml_collections
from flax import traverse_util

from mobilebert_jax.config import MobileBertConfig
from mobilebert_jax.partitioning import unbox_without_constraints

BUNDLED_CORPUS = "builtin:python_docs"
BUNDLED_TOKENIZER = "builtin:python_docs_sentencepiece"
# (config field naming a parameter source, config field with that source's architecture, whether the stage
# needs the source even where the config leaves it empty: a full-size config names its teacher on the command
# line, while an empty student_init means "start fresh")
PARAMETER_SOURCES = (("distill.teacher", "teacher_model", True), ("distill.student_init", "model", False))


def _get(config: ml_collections.ConfigDict, dotted: str):
    node = config
    for key in dotted.split("."):
        if not isinstance(node, ml_collections.ConfigDict) or key not in node:
            return None
        node = node[key]
    return node


def _set(config: ml_collections.ConfigDict, dotted: str, value) -> None:
    *parents, last = dotted.split(".")
    node = config
    for key in parents:
        node = node[key]
    node[last] = value


def write_placeholder_params(path: str, model: MobileBertConfig) -> str:
    """`path`/config.json + params.safetensors for a MobileBertForPreTraining of `model`, values unwritten.

    The safetensors header lists every parameter's name, dtype and shape; the
    data section is a hole (the file is extended with truncate), so a 294M-
    parameter teacher costs a few kilobytes of disk and no time.
    """
    from mobilebert_jax.convert import native
    from mobilebert_jax.modeling import MobileBertForPreTraining

    shapes = jax.eval_shape(lambda: MobileBertForPreTraining(model).init(
        jax.random.key(0), jnp.zeros((1, 2), jnp.int32))["params"])
    flat = traverse_util.flatten_dict(unbox_without_constraints(shapes), sep="/")
    header: dict = {"__metadata__": {"architecture": "MobileBertForPreTraining"}}
    offset = 0
    for name in sorted(flat):
        size = 4 * math.prod(flat[name].shape)
        header[name] = {"dtype": "F32", "shape": list(flat[name].shape), "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # the format aligns the data section to 8 bytes
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, native.PARAMS_FILE), "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        f.truncate(8 + len(blob) + offset)
    model.save_hf_json(os.path.join(path, "config.json"))
    return path


def stand_in_config(config: ml_collections.ConfigDict, scratch: str) -> ml_collections.ConfigDict:
    """A copy of `config` whose inputs are the stand-ins described above, all under `scratch`."""
    c = ml_collections.ConfigDict(config.to_dict())
    c.batch_size = 1  # the compiling process is the only one reading
    if isinstance(c.get("data"), ml_collections.ConfigDict):
        c.data.corpus = BUNDLED_CORPUS
        c.data.tokenizer = BUNDLED_TOKENIZER
        c.data.prepared_dir = os.path.join(scratch, "data")
        c.data.loader_threads = 1
        c.data.prefetch_buffer_size = 1
    for field, architecture, required in PARAMETER_SOURCES:
        if _get(c, field) or (required and _get(c, field) is not None):
            model = MobileBertConfig.from_dict(_get(c, architecture).to_dict())
            _set(c, field, write_placeholder_params(os.path.join(scratch, field.replace(".", "_")), model))
    return c
