"""The one reader of a finished run for the commands that score or ship it (evaluate, quantization, export).

A run's workdir alone holds what they need: the resolved config (config.json), the checkpoints and the recorded
tokenizer. Its stage (`stages.STAGES`) builds the model and says how the run is scored (`train.stage.Scoring`).
"""

from __future__ import annotations

from typing import Optional

from etils import epath

from mobilebert_jax import experiment_config, model_source, stages
from mobilebert_jax.data import tokenizer_record
from mobilebert_jax.errors import ConfigError
from mobilebert_jax.train.stage import FinishedRun, Scoring


def scoring(config, where: str) -> Scoring:
    """The run's stage's Scoring; a ConfigError where the stage's runs are not scored as tasks."""
    stage = stages.lookup(config.get("stage"), f"{where}: config.stage")
    if stage.scoring is None:
        raise ConfigError(f"{where}: stage {config.get('stage')!r} is not a fine-tuning run (its model is read "
                          "with --params, as any model directory)")
    return stage.scoring


def load(workdir: str, step: Optional[int] = None) -> FinishedRun:
    """The model (unrolled), trained parameters (latest checkpoint, or `step`) and tokenizer of a run."""
    config = experiment_config.read_recorded(workdir)
    if config is None:
        raise FileNotFoundError(f"--workdir={workdir!r}: no config.json; expected the workdir of a fine-tuning run")
    where = f"--workdir={workdir!r}"
    model = scoring(config, where).model(config, True)
    path = epath.Path(workdir) / "checkpoints" / str(step) if step is not None else epath.Path(workdir)
    source = model_source.open_source(str(path), where + (f" --step={step}" if step is not None else ""))
    params = model_source.read(source, stacked=False)
    return FinishedRun(workdir, config, model, params, tokenizer_record.run_tokenizer(workdir, config))
