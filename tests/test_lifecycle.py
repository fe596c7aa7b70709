"""The whole model lifecycle through the command line, at toy scale, as docs/lifecycle.md shows it:

pipeline (teacher -> progressive transfer -> PD) -> GLUE fine-tune straight from the distillation workdir ->
(the distillation workdir moved away) -> evaluate -> int8 quantize -> ONNX export -> HF export loaded by
transformers with equal outputs, its tokenizer giving our ids, and `pipeline("fill-mask")` on the distilled model.

One test on purpose: each stage's output is the next one's input. Needs the shared GLUE RTE files. Marked
slow (minutes of CPU; it runs in the default suite, `-m "not slow"` leaves it out):
`python -m pytest -q tests/test_lifecycle.py`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from limits import HANG_S

from tests.data_fixtures import SHARED_DATA, require_shared_data

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEQ = 32
TOY = ["--teacher_steps=4", "--phase_steps=2", "--pd_steps=2", "--layers=2", f"--seq_len={SEQ}",
       "--max_predictions=5", "--batch_size=8", "--eval_batch_size=8"]


def _run(*args):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    r = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=HANG_S)
    assert r.returncode == 0, f"{' '.join(args)}\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    return r


@pytest.mark.slow
def test_pretrain_distill_finetune_evaluate_quantize_export(tmp_path):
    require_shared_data()
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    ort = pytest.importorskip("onnxruntime")
    runs = tmp_path / "runs"
    _run("mobilebert_jax.main", f"--workdir={runs / 'pipeline'}", *TOY)
    distilled = runs / "pipeline" / "pd"
    assert json.loads((distilled / "tokenizer" / "tokenizer.json").read_text())["vocab_size"] == 4000

    # Fine-tune straight from the distillation workdir: its model and its tokenizer, no conversion step.
    finetuned = runs / "rte"
    _run("mobilebert_jax.main", "--config=experiments/finetune_glue.py:task=rte,smoke", f"--workdir={finetuned}",
         f"--config.init_checkpoint={distilled}", "--config.total_steps=4", "--config.batch_size=8",
         "--config.log_every=2", "--config.checkpoint.every_steps=4", "--config.eval.every_steps=4",
         f"--config.data.max_seq_length={SEQ}", f"--config.data.glue_dir={SHARED_DATA / 'glue'}")
    resolved = json.loads((finetuned / "config.json").read_text())
    assert resolved["model"]["vocab_size"] == 4000 and resolved["data"]["tokenizer"].endswith(".model")

    # A finished run is self-contained: the init checkpoint may go away.
    moved = tmp_path / "elsewhere"
    shutil.move(str(distilled), str(moved))
    _run("mobilebert_jax.evaluate", f"--workdir={finetuned}", "--batch_size=32")
    report = json.loads((finetuned / "eval" / "metrics.json").read_text())
    assert 0.0 <= report["dev"]["accuracy"] <= 1.0
    _run("mobilebert_jax.quantization", f"--workdir={finetuned}", "--calibration_examples=16", "--batch_size=32")
    int8 = json.loads((finetuned / "eval" / "int8.json").read_text())
    assert int8 and "ptq_config" in int8
    onnx_file = tmp_path / "rte.onnx"
    _run("mobilebert_jax.export", f"--workdir={finetuned}", f"--output={onnx_file}", f"--seq_len={SEQ}")
    hf_dir = tmp_path / "rte_hf"
    _run("mobilebert_jax.convert", "to-hf", f"--input={finetuned}", f"--output={hf_dir}")

    # Equal outputs: our checkpoint, the ONNX graph and transformers on the same tokenized pair.
    from mobilebert_jax.data.tokenizers import load_tokenizer
    from mobilebert_jax import finished_run

    run = finished_run.load(str(finetuned))
    ours_tok = load_tokenizer(run.tokenizer)
    hf_tok = transformers.AutoTokenizer.from_pretrained(hf_dir)
    first, second = "The module reads the file.", "A file is read by the module."
    encoded = hf_tok(first, second, padding="max_length", max_length=SEQ, return_tensors="np")
    assert encoded["input_ids"][0, :encoded["attention_mask"].sum()].tolist() == \
        [ours_tok.cls_id, *ours_tok.encode(first), ours_tok.sep_id, *ours_tok.encode(second), ours_tok.sep_id]
    inputs = {"input_ids": encoded["input_ids"].astype(np.int32), "input_mask": encoded["attention_mask"].astype(
        np.int32), "segment_ids": encoded["token_type_ids"].astype(np.int32)}
    ours = np.asarray(run.model.apply({"params": run.params}, inputs["input_ids"], attention_mask=inputs["input_mask"],
                                      token_type_ids=inputs["segment_ids"], deterministic=True)["logits"])
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    onnx_logits = dict(zip([o.name for o in session.get_outputs()], session.run(None, inputs)))["logits"]
    np.testing.assert_allclose(onnx_logits, ours, atol=1e-4)
    # transformers masks padding additively where this TF1-style model replaces masked scores by -6, so the two
    # agree on unpadded input (docs/lifecycle.md).
    unpadded = hf_tok(first, second, return_tensors="np")
    ours = np.asarray(run.model.apply({"params": run.params}, unpadded["input_ids"].astype(np.int32),
                                      token_type_ids=unpadded["token_type_ids"].astype(np.int32),
                                      deterministic=True)["logits"])
    hf_model = transformers.AutoModelForSequenceClassification.from_pretrained(hf_dir).eval()
    with torch.no_grad():
        hf_logits = hf_model(**{k: torch.tensor(v) for k, v in unpadded.items()}).logits.numpy()
    np.testing.assert_allclose(hf_logits, ours, atol=1e-4)

    # The distilled model itself, exported from its (moved) workdir, fills masks in transformers.
    mlm_dir = tmp_path / "distilled_hf"
    _run("mobilebert_jax.convert", "to-hf", f"--input={moved}", f"--output={mlm_dir}")
    fill = transformers.pipeline("fill-mask", model=str(mlm_dir))
    predictions = fill("Return the [MASK] of the list.")
    assert len(predictions) == 5 and all(p["token"] < 4000 for p in predictions)
