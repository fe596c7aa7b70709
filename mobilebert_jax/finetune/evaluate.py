"""How a finished GLUE or SQuAD run is scored: the official metrics and prediction files, the held-out split the
quantization and export comparisons run, the calibration examples and the labels (`train.stage.Scoring`).

GLUE: every dev split's metrics (MNLI matched and mismatched) and, where the test files are there, the GLUE
submission files. SQuAD: `predictions.json` and its EM/F1; v2.0 also `null_odds.json` and the no-answer threshold
chosen on dev. The command is `python -m mobilebert_jax.evaluate`.
"""

from __future__ import annotations

import os
from typing import Optional

import jax
import ml_collections
import numpy as np

from mobilebert_jax.data.tokenizers import load_tokenizer
from mobilebert_jax.errors import DataError
from mobilebert_jax.finetune import glue, glue_metrics, glue_submission, squad_data, squad_metrics
from mobilebert_jax.finetune.examples import glue_examples, squad_examples, squad_feature_options
from mobilebert_jax.finetune.prediction import predict
from mobilebert_jax.finetune.squad_postprocess import decode_spans
from mobilebert_jax.train.stage import FinishedRun, HeldOut


def calibration_rows(num_train: int, count: int, seed: int = 0) -> np.ndarray:
    """`count` training rows drawn without replacement, the same for a given seed."""
    return np.sort(np.random.default_rng(seed).permutation(num_train)[:min(count, num_train)])


def apply_fn(model, params):
    """The jitted inference function on a batch of model inputs: the model's task outputs, as numpy."""
    @jax.jit
    def fn(batch):
        out = model.apply({"params": params}, batch["input_ids"], attention_mask=batch["input_mask"],
                          token_type_ids=batch["segment_ids"], deterministic=True)
        return {k: out[k] for k in ("logits", "start_logits", "end_logits") if k in out}

    return fn


def evaluate_glue(run: FinishedRun, output_dir: str, batch_size: int) -> dict:
    config, task = run.config, glue.get_task(run.config.task)
    tokenizer = load_tokenizer(run.tokenizer)
    fn = apply_fn(run.model, run.params)
    report = {}
    for split in (*task.eval_splits, *task.test_splits):
        try:
            examples = glue_examples(config, task, split)
        except DataError as e:
            if split in task.test_splits:  # test files are optional
                report[f"{split}_skipped"] = str(e)
                continue
            raise
        features = glue.glue_features(task, examples, tokenizer, config.data.max_seq_length)
        preds = glue_metrics.predictions_from_logits(task, predict(fn, features, batch_size)["logits"])
        if split in task.test_splits:
            report[f"{split}_submission"] = glue_submission.write_submission(
                task, split, examples, preds, os.path.join(output_dir, "glue_submission"))
        else:
            report[split] = glue_metrics.compute_metrics(task, preds, features["label"])
    return report


def glue_held_out(run: FinishedRun) -> HeldOut:
    """The first dev split (the one fine-tuning evaluates on)."""
    task = glue.get_task(run.config.task)
    split = task.eval_splits[0]
    arrays = glue.glue_features(task, glue_examples(run.config, task, split), load_tokenizer(run.tokenizer),
                                run.config.data.max_seq_length)
    return glue_scored(task, arrays, f"{task.name} {split}")


def glue_scored(task: glue.GlueDataset, arrays: dict[str, np.ndarray], name: str) -> HeldOut:
    """GLUE features (with their labels) scored by the task's metrics."""
    def predictions(outputs):
        return glue_metrics.predictions_from_logits(task, outputs["logits"])

    return HeldOut(name=name, arrays=arrays, predictions=predictions,
                   score=lambda outputs: glue_metrics.compute_metrics(task, predictions(outputs), arrays["label"]))


def glue_calibration(run: FinishedRun, count: int, seq_len: int) -> dict[str, np.ndarray]:
    task = glue.get_task(run.config.task)
    train = glue_examples(run.config, task, "train")
    rows = calibration_rows(len(train), count, seed=run.config.seed)
    return glue.glue_features(task, [train[i] for i in rows], load_tokenizer(run.tokenizer), seq_len)


def glue_labels(config: ml_collections.ConfigDict) -> Optional[list[str]]:
    return glue.get_task(config.task).labels


def evaluate_squad(run: FinishedRun, output_dir: str, batch_size: int) -> dict:
    config = run.config
    examples = squad_examples(config, "dev")
    features = squad_data.build_features(examples, load_tokenizer(run.tokenizer), **squad_feature_options(config))
    logits = predict(apply_fn(run.model, run.params), features.arrays, batch_size)
    version_2 = config.version == "2.0"
    decoded = decode_spans(examples, features, logits["start_logits"], logits["end_logits"], version_2=version_2,
                           n_best_size=config.eval.n_best_size, max_answer_length=config.eval.max_answer_length)
    if not version_2:
        predictions = decoded.predictions()
        squad_metrics.write_predictions(output_dir, predictions)
        return squad_metrics.evaluate_v1(examples, predictions)
    threshold = squad_metrics.choose_null_threshold(examples, decoded.best_span, decoded.null_odds)
    predictions = decoded.predictions(threshold)
    squad_metrics.write_predictions(output_dir, predictions, decoded.null_odds)
    report = squad_metrics.evaluate_v2(examples, predictions)
    report["null_score_diff_threshold"] = threshold
    return report


def squad_held_out(run: FinishedRun) -> HeldOut:
    """The dev set's features; scored by EM/F1 of the decoded answers as fractions, as GLUE's metrics are (v2.0 at
    the no-answer threshold 0)."""
    config = run.config
    examples = squad_examples(config, "dev")
    features = squad_data.build_features(examples, load_tokenizer(run.tokenizer), **squad_feature_options(config))

    def score(outputs):
        decoded = decode_spans(examples, features, outputs["start_logits"], outputs["end_logits"],
                               version_2=config.version == "2.0", n_best_size=config.eval.n_best_size,
                               max_answer_length=config.eval.max_answer_length)
        if config.version == "2.0":
            report = squad_metrics.evaluate_v2(examples, decoded.predictions())
            return {"exact": report["exact"] / 100, "f1": report["f1"] / 100}
        report = squad_metrics.evaluate_v1(examples, decoded.predictions())
        return {"exact_match": report["exact_match"] / 100, "f1": report["f1"] / 100}

    def predictions(outputs):  # each feature's best start and end, as one number
        seq_len = outputs["start_logits"].shape[-1]
        return np.argmax(outputs["start_logits"], -1) * seq_len + np.argmax(outputs["end_logits"], -1)

    return HeldOut(name=f"SQuAD v{config.version} dev", arrays=features.arrays, score=score, predictions=predictions)


def squad_calibration(run: FinishedRun, count: int, seq_len: int) -> dict[str, np.ndarray]:
    config = run.config
    train = squad_examples(config, "train")
    rows = calibration_rows(len(train), count, seed=config.seed)
    options = dict(squad_feature_options(config), max_seq_length=seq_len)
    return squad_data.build_features([train[i] for i in rows], load_tokenizer(run.tokenizer), **options).arrays


def squad_labels(config: ml_collections.ConfigDict) -> Optional[list[str]]:
    del config  # span scores, not classes
    return None
