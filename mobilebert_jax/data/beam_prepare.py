"""The preparation of data/prepare.py as an Apache Beam pipeline: the same work units, shards and files, on any runner.

    python -m mobilebert_jax.data.prepare --runner=DataflowRunner [Beam pipeline options] --config=... [--config.X=...]

The launching process does what is done once (reads the config, writes settings.json and the work-unit plan, or
returns a finished directory as it is) and, when the pipeline has finished, writes the manifest; the pipeline
runs prepare.py's own per-unit and per-shard functions on the workers, so the files are byte for byte the
in-process path's (tested on the DirectRunner with several worker processes). Pass 2 starts when pass 1's counts
are complete (a global combine): every shard draws its random next sentences from the whole split. A unit or
shard whose done-file exists is read, not redone, so a failed job rerun continues where it stopped.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Sequence

import ml_collections

from mobilebert_jax.data import prepare as prepare_lib
from mobilebert_jax.data.manifest import read_json
from mobilebert_jax.errors import ConfigError
from mobilebert_jax import storage


def prepare_on_beam(data_config: ml_collections.ConfigDict, output_dir: str, pipeline_args: Sequence[str], *,
                    checksums: bool = True) -> dict[str, Any]:
    """prepare.prepare's result, computed by a Beam pipeline built from `pipeline_args` (--runner=... and the
    runner's options)."""
    try:
        import apache_beam as beam
        from apache_beam.options.pipeline_options import PipelineOptions
    except ImportError as e:
        raise ConfigError(f"--runner needs Apache Beam ({e}): install the beam extra in a virtualenv of its own "
                          "(docs/data.md, 'Apache Beam'), or leave --runner out to prepare in this process") from None
    plan = prepare_lib.begin(data_config, output_dir, checksums=checksums)
    if isinstance(plan, dict):
        return plan
    started = time.time()
    with beam.Pipeline(options=PipelineOptions(list(pipeline_args))) as pipeline:
        unit_counts = (pipeline
                       | "units" >> beam.Create(range(len(plan.units)))
                       | "spread units" >> beam.Reshuffle()
                       | "tokenize" >> beam.Map(_tokenize_unit, plan))
        (unit_counts
         | "all units" >> beam.combiners.ToList()
         | "shards" >> beam.FlatMap(_shard_jobs, plan)
         | "spread shards" >> beam.Reshuffle()
         | "instances" >> beam.Map(_instances_shard, plan))
    manifest = prepare_lib.finish(plan, prepare_lib.read_unit_counts(plan))
    logging.info("prepared %s on Beam in %.1f s", output_dir, time.time() - started)
    return manifest


def _done(path: str) -> Any:
    return read_json(path) if storage.path(path).is_file() else None


def _tokenize_unit(index: int, plan: prepare_lib.Plan) -> tuple[int, dict[str, Any]]:
    from apache_beam.metrics import Metrics

    counts = _done(prepare_lib.unit_done(plan.output_dir, index))
    if counts is None:
        started = time.monotonic()
        counts = prepare_lib.tokenize_unit(plan, index)
        seconds = time.monotonic() - started
        logging.info("tokenized unit %d (%s): %d tokens in %.1f s, %.0f tokens/s", index, counts["unit"],
                     counts["tokens"], seconds, counts["tokens"] / max(seconds, 1e-9))
        Metrics.counter("prepare", "tokens").inc(counts["tokens"])
        Metrics.counter("prepare", "tokenize_seconds").inc(int(seconds))
    return index, counts


def _shard_jobs(indexed_counts: list[tuple[int, dict[str, Any]]], plan: prepare_lib.Plan) -> list[tuple[str, int, int]]:
    return prepare_lib.shard_jobs(plan, [counts for _, counts in sorted(indexed_counts, key=lambda ic: ic[0])])


def _instances_shard(job: tuple[str, int, int], plan: prepare_lib.Plan) -> str:
    from apache_beam.metrics import Metrics

    if _done(prepare_lib.shard_done(plan.output_dir, *job)) is None:
        counts = prepare_lib.instances_shard(plan, *job)
        Metrics.counter("prepare", "instances").inc(counts["instances"])
    return "%s-%05d-of-%05d" % job
