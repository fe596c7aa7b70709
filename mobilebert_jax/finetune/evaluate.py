"""Official metrics and prediction files for a fine-tuning run, from its latest (or a given) checkpoint.

    python -m mobilebert_jax.finetune.evaluate --workdir=runs/rte [--step=N] [--batch_size=64]

GLUE: every dev split's metrics (MNLI matched and mismatched) and, where the
test files are there, the GLUE submission files. SQuAD: `predictions.json`
and its EM/F1; v2.0 also `null_odds.json` and the no-answer threshold chosen
on dev. Everything lands in `<workdir>/eval/` next to `metrics.json`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Optional

import flax.linen as nn
import jax
import ml_collections
from absl import flags
from etils import epath

from mobilebert_jax import model_source, storage
from mobilebert_jax.data.tokenizers import load_tokenizer
from mobilebert_jax.errors import ConfigError, DataError
from mobilebert_jax.modeling import MobileBertForQuestionAnswering, MobileBertForSequenceClassification
from mobilebert_jax.finetune import stage as finetune_stage, glue, glue_metrics, glue_submission, squad_data, squad_metrics
from mobilebert_jax.finetune.prediction import predict
from mobilebert_jax.finetune.squad_postprocess import decode_spans
from mobilebert_jax.train import lineage


@dataclasses.dataclass(frozen=True)
class FinishedRun:
    """What a fine-tuning run's workdir alone holds: no init checkpoint or outside tokenizer is read."""
    config: ml_collections.ConfigDict
    model: nn.Module
    params: Any  # numpy, the model's own tree
    tokenizer: str  # the spec of the run's recorded tokenizer copy


def load_run(workdir: str, step: Optional[int] = None) -> FinishedRun:
    """The model, trained parameters (latest checkpoint, or `step`) and tokenizer of a fine-tuning run.

    Always the unrolled model (a `scan_layers` run's layers unstacked): evaluation, quantization (which
    intercepts each Dense by its path) and export see one layout; evaluation compiles no backward pass."""
    config_file = epath.Path(workdir) / "config.json"
    if not config_file.exists():
        raise FileNotFoundError(f"--workdir={workdir!r}: no config.json; expected the workdir of a fine-tuning run")
    config = ml_collections.ConfigDict(json.loads(config_file.read_text()))
    if config.get("stage") not in ("glue_finetuning", "squad_finetuning"):
        raise ConfigError(f"--workdir={workdir!r}: stage {config.get('stage')!r} is not a fine-tuning run")
    model_cfg = finetune_stage.model_config(config).replace(scan_layers=False)
    if config.stage == "glue_finetuning":
        model = MobileBertForSequenceClassification(model_cfg, num_labels=glue.get_task(config.task).num_labels)
    else:
        model = MobileBertForQuestionAnswering(model_cfg)
    where = f"--workdir={workdir!r}" + (f" --step={step}" if step is not None else "")
    path = epath.Path(workdir) / "checkpoints" / str(step) if step is not None else epath.Path(workdir)
    params = model_source.read(model_source.open_source(str(path), where), stacked=False)
    return FinishedRun(config, model, params, lineage.run_tokenizer(workdir, config))


def _apply_fn(model, params):
    @jax.jit
    def fn(batch):
        out = model.apply({"params": params}, batch["input_ids"], attention_mask=batch["input_mask"],
                          token_type_ids=batch["segment_ids"], deterministic=True)
        return {k: out[k] for k in ("logits", "start_logits", "end_logits") if k in out}

    return fn


def evaluate_glue(run: FinishedRun, output_dir: str, batch_size: int) -> dict:
    config, task = run.config, glue.get_task(run.config.task)
    tokenizer = load_tokenizer(run.tokenizer)
    fn = _apply_fn(run.model, run.params)
    report = {}
    for split in (*task.eval_splits, *task.test_splits):
        try:
            examples = finetune_stage.glue_examples(config, task, split)
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


def evaluate_squad(run: FinishedRun, output_dir: str, batch_size: int) -> dict:
    config = run.config
    tokenizer = load_tokenizer(run.tokenizer)
    examples = finetune_stage.squad_examples(config, "dev")
    features = squad_data.build_features(examples, tokenizer, **finetune_stage.squad_feature_options(config))
    logits = predict(_apply_fn(run.model, run.params), features.arrays, batch_size)
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


def evaluate_run(workdir: str, step: Optional[int] = None, batch_size: int = 64) -> dict:
    run = load_run(workdir, step)
    score = evaluate_glue if run.config.stage == "glue_finetuning" else evaluate_squad
    output_dir = os.path.join(workdir, "eval")
    storage.path(output_dir).mkdir(parents=True, exist_ok=True)
    report = score(run, output_dir, batch_size)
    storage.path(output_dir, "metrics.json").write_text(json.dumps(report, indent=2))
    return report


def main(argv) -> None:
    from mobilebert_jax import cli

    del argv
    cli.log_libraries_to(flags.FLAGS.workdir)
    print(json.dumps(evaluate_run(flags.FLAGS.workdir, flags.FLAGS.step, flags.FLAGS.batch_size), indent=2))


if __name__ == "__main__":
    # Defined here, not at import: the quantization and export commands import this module with flags of their own.
    flags.DEFINE_string("workdir", None, "the fine-tuning run's workdir", required=True)
    flags.DEFINE_integer("step", None, "checkpoint step (default: latest)")
    flags.DEFINE_integer("batch_size", 64, "evaluation batch size", lower_bound=1)
    from mobilebert_jax import cli

    cli.run_absl(main)
