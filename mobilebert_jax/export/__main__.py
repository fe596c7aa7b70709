"""Export a fine-tuning run's model to ONNX (float, or the int8 simulation with --int8).

    python -m mobilebert_jax.export --workdir=runs/sst2 --output=sst2.onnx [--seq_len=128] [--batch_size=1] [--int8]
"""

from __future__ import annotations

import os

from absl import app, flags

from mobilebert_jax.tasks import evaluate

flags.DEFINE_string("workdir", None, "a fine-tuning run (experiments/finetune_glue.py or finetune_squad.py)",
                    required=True)
flags.DEFINE_string("output", None, "the .onnx file to write", required=True)
flags.DEFINE_integer("step", None, "checkpoint step (default: latest)")
flags.DEFINE_integer("seq_len", 128, "the fixed sequence length of the exported graph")
flags.DEFINE_integer("batch_size", 1, "the fixed batch size of the exported graph")
flags.DEFINE_bool("int8", False, "export the int8 simulation (weights-only: activation ranges need "
                                 "`python -m mobilebert_jax.quantization` calibration data)")
FLAGS = flags.FLAGS


def main(argv) -> None:
    del argv
    from mobilebert_jax.export import export_model
    from mobilebert_jax.quantization import PTQConfig, quantize

    run = evaluate.load_run(FLAGS.workdir, FLAGS.step)
    model, params = run.model, run.params
    quantized = quantize(model, params, None, PTQConfig(activations=False)) if FLAGS.int8 else None
    export_model(model, params, FLAGS.output, batch_size=FLAGS.batch_size, seq_len=FLAGS.seq_len,
                 quantized=quantized)
    print(f"wrote {FLAGS.output} ({os.path.getsize(FLAGS.output):,} bytes): inputs input_ids, input_mask, "
          f"segment_ids int32[{FLAGS.batch_size}, {FLAGS.seq_len}]")


if __name__ == "__main__":
    app.run(main)
