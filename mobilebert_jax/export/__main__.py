r"""Export a fine-tuning run or a bare model to LiteRT (.tflite) or ONNX, in float32 or int8.

    python -m mobilebert_jax.export --workdir=runs/sst2 --output=sst2.tflite \
        [--format=tflite] [--quantization=float32|dynamic_int8|full_int8] [--calibration_examples=300] \
        [--seq_len=<the run's max_seq_length>] [--batch_size=1] [--step=N]
    python -m mobilebert_jax.export --params=path/to/params_dir [--vocab=vocab.txt] --output=mlm.tflite \
        [--quantization=full_int8 --calibration_text=corpus.txt]
    python -m mobilebert_jax.export --params=path/to/params_dir --embedding --output=embedder.tflite

`--workdir`: a GLUE or SQuAD fine-tuning run (sequence-classification or span-QA head); full_int8 calibrates
on `--calibration_examples` of the run's own training examples (the seeded draw `python -m
mobilebert_jax.quantization` uses). `--params`: a parameter directory (`convert.save_params`) or an HF
directory, e.g. a bare pretraining model (`mlm_logits`, `nsp_logits`); full_int8 calibrates on the first lines
of `--calibration_text` (one passage per line, e.g. the pretraining corpus). `--embedding` (with --params):
the graph's one output is the model's pooled [CLS] vector, `embedding` [batch, hidden], instead of its heads.

A .tflite at --batch_size=1 of a GLUE run, or of --embedding, carries TFLite Metadata (input roles, the
tokenizer's vocabulary packed in, the label names; the `litert` extra), so MediaPipe's TextClassifier or
TextEmbedder loads it as it is; --noapp_metadata leaves it out. Next to OUTPUT it writes the tokenizer's
vocabulary (`<stem>.vocab.txt`, or `<stem>.spm.model` for SentencePiece) and `<stem>.json`: input and output
names, dtypes and shapes, the special token ids, labels. An existing file of these is refused unless
`--overwrite`; so is a place inside a training workdir.
"""

from __future__ import annotations

import json

import numpy as np
from absl import app, flags
from etils import epath

from mobilebert_jax import output_paths
from mobilebert_jax.errors import ConfigError
from mobilebert_jax.export import sources

flags.DEFINE_string("workdir", None, "a fine-tuning run (experiments/finetune_glue.py or finetune_squad.py)")
flags.DEFINE_string("params", None, "a parameter directory (convert.save_params) or HF directory instead of --workdir")
flags.DEFINE_string("vocab", None, "with --params: the tokenizer's vocabulary (WordPiece .txt or SentencePiece "
                                   ".model) to ship next to the model (default: the one the model records)")
flags.DEFINE_string("output", None, "the file to write: .tflite or .onnx", required=True)
flags.DEFINE_enum("format", None, ["tflite", "onnx"], "default: from --output's suffix")
flags.DEFINE_enum("quantization", "float32", ["float32", "dynamic_int8", "full_int8"],
                  "float32; int8 weights with activations quantized per call; or int8 weights and activations "
                  "calibrated on training data")
flags.DEFINE_integer("calibration_examples", 300, "full_int8: training examples (or text lines) to calibrate on")
flags.DEFINE_string("calibration_text", None, "full_int8 with --params: a text file, one passage per line")
flags.DEFINE_integer("step", None, "checkpoint step (default: latest)")
flags.DEFINE_integer("seq_len", None, "the fixed sequence length (default: the run's max_seq_length, else 128)")
flags.DEFINE_integer("batch_size", 1, "the fixed batch size of the exported graph", lower_bound=1)
flags.DEFINE_bool("embedding", False, "with --params: export the pooled [CLS] vector (output `embedding`) instead "
                  "of the model's heads (a text embedder)")
flags.DEFINE_bool("app_metadata", True, "a .tflite at --batch_size=1 of a GLUE run or of --embedding: embed the TFLite "
                  "Metadata app runtimes need (MediaPipe TextClassifier, TextEmbedder; the `litert` extra)")
flags.DEFINE_bool("overwrite", False, "replace --output and its .json and vocabulary files if they exist")
FLAGS = flags.FLAGS


def _vocab_file(vocab: str) -> str:
    if vocab.startswith("builtin:"):
        from mobilebert_jax.data.builtin_tokenizer import builtin_tokenizer_path

        return builtin_tokenizer_path(vocab)
    return vocab


def _vocab_sidecar_path(vocab: str, output: epath.Path) -> epath.Path:
    return output.with_name(output.stem + (".spm.model" if vocab.endswith(".model") else ".vocab.txt"))


def _vocab_sidecar(vocab: str, output: epath.Path) -> epath.Path:
    vocab = _vocab_file(vocab)
    target = _vocab_sidecar_path(vocab, output)
    target.write_bytes(epath.Path(vocab).read_bytes())
    return target


def describe(model, vocab_file: epath.Path, vocab: str, *, batch_size: int, seq_len: int, fmt: str,
             quantization: str, outputs: dict, labels=None, source: str = "") -> dict:
    """What an app needs to feed the graph: the metadata written to `<stem>.json`."""
    from mobilebert_jax.data.tokenizers import load_tokenizer
    from mobilebert_jax.export import INPUTS

    tok = load_tokenizer(vocab)
    shape = [batch_size, seq_len]
    return {
        "format": fmt, "quantization": quantization, "source": source,
        "inputs": {name: {"dtype": "int32", "shape": shape} for name in INPUTS},
        "outputs": {k: {"dtype": "float32", "shape": [int(d) for d in v.shape]} for k, v in outputs.items()},
        "tokenizer": {"file": vocab_file.name, "kind": "sentencepiece" if vocab_file.suffix == ".model"
                      else "wordpiece_uncased", "cls_id": tok.cls_id, "sep_id": tok.sep_id, "pad_id": tok.pad_id,
                      "unk_id": tok.unk_id, "mask_id": tok.mask_id},
        "attention_mask_mode": model.config.attention_mask_mode,
        "labels": list(labels) if labels else None,
    }


def main(argv) -> None:
    del argv
    import jax

    from mobilebert_jax import cli
    from mobilebert_jax.export import EMBEDDING, FORMATS, OUTPUTS, export_model, model_function

    if (FLAGS.workdir is None) == (FLAGS.params is None):
        raise app.UsageError("give exactly one of --workdir (a fine-tuning run) and --params (a model directory)")
    if FLAGS.embedding and FLAGS.params is None:
        raise ConfigError("--embedding exports a bare model: give --params, not --workdir")
    heads = EMBEDDING if FLAGS.embedding else OUTPUTS
    output = epath.Path(FLAGS.output)
    cli.log_libraries_to(FLAGS.workdir or str(output.parent))
    fmt = FLAGS.format or FORMATS.get(output.suffix)
    if fmt is None:
        raise ConfigError(f"--output={FLAGS.output}: cannot tell the format from the suffix; use .tflite or .onnx "
                          "or pass --format")
    output_paths.claim_files([output, output.with_name(output.stem + ".json")], "--output", FLAGS.overwrite)
    full_int8 = FLAGS.quantization == "full_int8"
    labels, source = None, FLAGS.workdir or FLAGS.params
    if FLAGS.workdir is not None:
        from mobilebert_jax import finished_run

        run = finished_run.load(FLAGS.workdir, FLAGS.step)
        scoring = finished_run.scoring(run.config, f"--workdir={FLAGS.workdir!r}")
        model, params, config = run.model, run.params, run.config
        seq_len, vocab = FLAGS.seq_len or config.data.max_seq_length, run.tokenizer
        labels = scoring.labels(config)
        calibration = scoring.calibration(run, FLAGS.calibration_examples, seq_len) if full_int8 else None
    else:
        if full_int8 and FLAGS.calibration_text is None:
            raise ConfigError("--quantization=full_int8 with --params needs --calibration_text to calibrate on")
        model, params, recorded_vocab = sources.bare_model(FLAGS.params)
        vocab = FLAGS.vocab or recorded_vocab
        if vocab is None:
            raise ConfigError(f"--params={FLAGS.params}: records no tokenizer; give --vocab, the tokenizer vocabulary "
                              "an app needs next to the model")
        seq_len = FLAGS.seq_len or 128
        calibration = (sources.text_calibration(FLAGS.calibration_text, vocab, FLAGS.calibration_examples, seq_len)
                       if full_int8 else None)
    shape = np.zeros((FLAGS.batch_size, seq_len), np.int32)
    try:
        outputs = jax.eval_shape(model_function(model, params, outputs=heads), shape, shape, shape)
    except ConfigError as e:  # --embedding of a model without a pooler
        raise ConfigError(f"--params={FLAGS.params}: {e}") from None
    # The app runtimes feed one text to a sequence classifier or an embedder; a QA or pretraining model, or a
    # batch, gets no metadata (app_metadata.py says why).
    classifier = labels is not None and set(outputs) == {"logits"} and len(outputs["logits"].shape) == 2
    app_runtime = FLAGS.app_metadata and fmt == "tflite" and FLAGS.batch_size == 1 and (classifier or FLAGS.embedding)
    if app_runtime:
        from mobilebert_jax.export import app_metadata

        app_metadata.require()  # the extra is checked before the (minutes-long) conversion starts
    # The vocabulary file too (its name depends on the tokenizer), before the (minutes-long) conversion starts.
    output_paths.claim_files([_vocab_sidecar_path(_vocab_file(vocab), output)], "--output", FLAGS.overwrite)
    print(f"exporting {source} to {fmt} ({FLAGS.quantization}), inputs int32[{FLAGS.batch_size}, {seq_len}]"
          + (f", calibrating on {len(calibration['input_ids'])} examples" if full_int8 else ""), flush=True)
    output.parent.mkdir(parents=True, exist_ok=True)
    # With metadata the graph is written once, after the metadata is in (no second read and write, on gs:// neither).
    graph = export_model(model, params, None if app_runtime else str(output), batch_size=FLAGS.batch_size,
                         seq_len=seq_len, quantization=FLAGS.quantization, calibration=calibration, fmt=fmt,
                         outputs=heads)
    if app_runtime:
        tokenizer_file = _vocab_file(vocab)
        output.write_bytes(app_metadata.text_classifier(graph, tokenizer_file=tokenizer_file, labels=labels)
                           if classifier else app_metadata.text_embedder(graph, tokenizer_file=tokenizer_file))
    vocab_file = _vocab_sidecar(vocab, output)
    meta = describe(model, vocab_file, vocab, batch_size=FLAGS.batch_size, seq_len=seq_len, fmt=fmt,
                    quantization=FLAGS.quantization, outputs=outputs, labels=labels, source=source)
    meta_file = output.with_name(output.stem + ".json")
    meta_file.write_text(json.dumps(meta, indent=2) + "\n")
    app_note = f", with {'TextClassifier' if classifier else 'TextEmbedder'} metadata" if app_runtime else ""
    print(f"wrote {output} ({output.stat().length:,} bytes{app_note}), "
          f"{vocab_file.name}, {meta_file.name}: inputs input_ids, input_mask, segment_ids int32[{FLAGS.batch_size}, "
          f"{seq_len}]; outputs {', '.join(outputs)}")


if __name__ == "__main__":
    from mobilebert_jax import cli

    cli.run_absl(main)
