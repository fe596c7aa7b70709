r"""A fine-tuned run on its held-out set in every deployed form: JAX float and int8 simulation, LiteRT and ONNX exports.

    python -m mobilebert_jax.export.compare --workdir=runs/sst2 --output_dir=runs/sst2/export \
        [--calibration_examples=300] [--batch_size=1] [--forms=jax_float,...]

Exports the run's model in each form into `--output_dir`, runs each on the whole dev set (the exported
graphs on their own runtimes: the LiteRT interpreter, onnxruntime) and prints, per form, the stage's metrics,
how often its predictions agree with JAX float, and the size of what a device stores. The int8 forms share
one calibration: `--calibration_examples` training examples (the seeded draw of `python -m
mobilebert_jax.quantization`). Writes `<output_dir>/compare.json` and prints a Markdown table.
"""

from __future__ import annotations

import json
from typing import Callable

import jax
import numpy as np
from absl import flags
from etils import epath

from mobilebert_jax.errors import ConfigError

FORMS = {  # name -> (format, quantization); "jax" forms run in JAX, the others from the exported file
    "jax_float": ("jax", "float32"), "jax_int8_simulation": ("jax", "int8_simulation"),
    "litert_float32": ("tflite", "float32"), "litert_dynamic_int8": ("tflite", "dynamic_int8"),
    "litert_full_int8": ("tflite", "full_int8"), "onnx_float32": ("onnx", "float32"),
    "onnx_dynamic_int8": ("onnx", "dynamic_int8"), "onnx_full_int8": ("onnx", "full_int8"),
}


def _jax_runner(model, params, qmodel=None) -> Callable[[dict], dict]:
    from mobilebert_jax.export import model_function

    fn = jax.jit(model_function(model, params, qmodel))
    return lambda batch: fn(batch["input_ids"], batch["input_mask"], batch["segment_ids"])


def _file_runner(path: epath.Path, fmt: str) -> Callable[[dict], dict]:
    if fmt == "tflite":
        from mobilebert_jax.export.tflite_export import LiteRTModel

        litert = LiteRTModel(str(path))
        return lambda batch: litert(**batch)
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return lambda batch: dict(zip(names, session.run(None, batch)))


def compare_forms(model, params, held_out, calibration: dict, output_dir: epath.Path, *,
                  forms=tuple(FORMS), batch_size: int = 1, log=print) -> list[dict]:
    """One row per form: metrics, agreement with JAX float (over the whole held-out set), bytes stored."""
    from mobilebert_jax.export import export_model, representative_batches
    from mobilebert_jax.quantization import calibrate, float_size_bytes, quantize
    from mobilebert_jax.finetune.prediction import predict

    arrays = held_out.arrays
    seq_len, output_dir = arrays["input_ids"].shape[1], epath.Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    rows, reference = [], None
    for name in ("jax_float", *[f for f in forms if f != "jax_float"]):  # float first: the reference
        fmt, quantization = FORMS[name]
        if fmt == "jax":
            qmodel = None
            if quantization == "int8_simulation":
                ranges = calibrate(model, params, representative_batches(calibration, 32))
                qmodel = quantize(model, params, ranges)
            run, size = _jax_runner(model, params, qmodel), (qmodel.size_bytes() if qmodel else
                                                             float_size_bytes(params))
        else:
            path = output_dir / f"{name}.{fmt}"
            log(f"{name}: exporting to {path}", flush=True)
            export_model(model, params, str(path), batch_size=batch_size, seq_len=seq_len, fmt=fmt,
                         quantization=quantization, calibration=calibration if quantization == "full_int8" else None)
            run, size = _file_runner(path, fmt), path.stat().length
        log(f"{name}: running {len(arrays['input_ids']):,} {held_out.name} examples", flush=True)
        outputs = predict(run, arrays, batch_size)
        preds = held_out.predictions(outputs)
        reference = preds if reference is None else reference
        row = {"form": name, **held_out.score(outputs), "bytes": int(size)}
        if np.issubdtype(preds.dtype, np.floating):  # regression: how far the predictions moved
            row["max_abs_change"] = float(np.max(np.abs(preds - reference)))
        else:
            row["agreement"] = float(np.mean(preds == reference))
        rows.append(row)
    return rows


def markdown(rows: list[dict]) -> str:
    metrics = [k for k in rows[0] if k not in ("form", "bytes", "agreement", "max_abs_change")]
    lines = ["| form | " + " | ".join(metrics) + " | agreement with JAX float (max change) | bytes |",
             "|---|" + "---:|" * (len(metrics) + 2)]
    for r in rows:
        lines.append(f"| {r['form']} | " + " | ".join(f"{100 * r[m]:.2f}" for m in metrics)
                     + (f" | {100 * r['agreement']:.2f}%" if "agreement" in r else f" | {r['max_abs_change']:.4f}")
                     + f" | {r['bytes']:,} |")
    return "\n".join(lines)


FLAGS = flags.FLAGS


def define_flags() -> None:
    """Called only when run as a command: tests and benchmarks import compare_forms next to other tools' flags."""
    flags.DEFINE_string("workdir", None, "a fine-tuning run", required=True)
    flags.DEFINE_string("output_dir", None, "where the exported files go (default: <workdir>/export)")
    flags.DEFINE_integer("step", None, "checkpoint step (default: latest)")
    flags.DEFINE_integer("calibration_examples", 300, "training examples every int8 form calibrates on")
    flags.DEFINE_integer("batch_size", 1, "the exported graphs' fixed batch size (1, as an app runs them)")
    flags.DEFINE_list("forms", list(FORMS), f"forms to compare, from {list(FORMS)}")


def main(argv) -> None:
    del argv
    from mobilebert_jax import cli
    from mobilebert_jax import finished_run

    cli.log_libraries_to(FLAGS.workdir)
    unknown = sorted(set(FLAGS.forms) - set(FORMS))
    if unknown:
        raise ConfigError(f"--forms: unknown {unknown}; choose from {list(FORMS)}")
    run = finished_run.load(FLAGS.workdir, FLAGS.step)
    scoring = finished_run.scoring(run.config, f"--workdir={FLAGS.workdir!r}")
    calibration = scoring.calibration(run, FLAGS.calibration_examples, run.config.data.max_seq_length)
    held_out = scoring.held_out(run)
    output_dir = epath.Path(FLAGS.output_dir or epath.Path(FLAGS.workdir) / "export")
    rows = compare_forms(run.model, run.params, held_out, calibration, output_dir, forms=FLAGS.forms,
                         batch_size=FLAGS.batch_size)
    examples = int(len(held_out.arrays["input_ids"]))
    (output_dir / "compare.json").write_text(json.dumps(
        {"held_out": held_out.name, "held_out_examples": examples, "calibration_examples":
         int(len(calibration["input_ids"])), "rows": rows}, indent=2) + "\n")
    print(f"{held_out.name} ({examples:,} examples), {len(calibration['input_ids'])} calibration examples")
    print(markdown(rows))


if __name__ == "__main__":
    from mobilebert_jax import cli

    define_flags()
    cli.run_absl(main)
