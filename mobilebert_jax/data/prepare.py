r"""Corpus -> tokenized documents -> BERT sentence-pair instances, as ArrayRecord shards with a manifest.

    python -m mobilebert_jax.data.prepare --config=experiments/STAGE.py[:arg] --config.data.prepared_dir=DIR \
        [--config.data.FIELD=VALUE ...]
    python -m mobilebert_jax.data.prepare --runner=DirectRunner|DataflowRunner [Beam pipeline options] \
        --config=experiments/STAGE.py[:arg] --config.data.prepared_dir=DIR [--config.data.FIELD=VALUE ...]

The first form prepares in this process and `data.prepare_workers` spawned ones (0: one per core; 1: inline);
the second runs the same per-unit and per-shard functions as an Apache Beam pipeline (data/beam_prepare.py, the
`beam` extra) and writes the same bytes. docs/data.md gives the Dataflow command for a paper-scale corpus.

prepares the `config.data` section of a pretraining or distillation config (data/config.py says what each field
means) into `config.data.prepared_dir`, ahead of the run: the stage itself, given the same config and flags, reuses
it instead of preparing its own copy in WORKDIR/data. For example, 128-token sequences of the embedded corpus with
the released MobileBERT vocabulary:

    python -m mobilebert_jax.data.prepare --config=experiments/teacher_ib_bert_large.py \
        --config.data.tokenizer=../shared/data/vocab/bert-uncased-vocab.txt --config.data.max_seq_length=128 \
        --config.data.prepared_dir=data/py128

Layout of the prepared directory:
  settings.json                  what the data is made with; written first
  documents/unit-NNNNN.*         pass 1: one ArrayRecord of tokenized documents per corpus work unit,
                                 and a .json of its counts, written after the records are complete
  {train,eval}-NNNNN-of-MMMMM.*  pass 2: instances (unmasked sentence pairs) and a .json of counts
  manifest.json                  written last: tokenizer hash, counts, skips, shard lists, each shard's size
                                 and sha256

A restarted preparation skips every unit and shard whose .json exists; any
different setting or tokenizer is refused instead of mixing data. A finished
directory is reused only after each shard's size and sha256 match the
manifest; a shard deleted, cut short or changed is named and prepared again. Masks are
drawn at load time (see loader.py), so masking settings are not fixed here.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import logging
import multiprocessing
import os
import signal
import sys
import time
from typing import Any, Callable, Optional, Sequence

import ml_collections
import numpy as np
from array_record.python.array_record_module import ArrayRecordWriter
from tqdm import tqdm

from mobilebert_jax import cli, output_paths, storage
from mobilebert_jax.data import config as data_config_lib
from mobilebert_jax.data import manifest as manifest_lib
from mobilebert_jax.data import records
from mobilebert_jax.data.instances import create_instances_from_document
from mobilebert_jax.data.randomness import Stream, rng
from mobilebert_jax.data.sources import SkipLog, WorkUnit, plan_units, python_docs, read_unit
from mobilebert_jax.data.tokenizers import Tokenizer, load_tokenizer
from mobilebert_jax.errors import ConfigError, DataError

DOCUMENTS_DIR = "documents"
ARRAY_RECORD_OPTIONS = "group_size:1"  # one record per chunk: fast random access for the loader


@dataclasses.dataclass(frozen=True)
class Plan:
    """What the per-unit and per-shard functions need: the same for the in-process passes and the Beam pipeline."""
    output_dir: str
    settings: dict[str, Any]
    units: tuple[WorkUnit, ...]
    tokenizer: str  # the spec; each process loads it once
    tokenizer_facts: dict[str, Any]  # the manifest's `tokenizer`


def prepare(data_config: ml_collections.ConfigDict, output_dir: str, *, checksums: bool = False) -> dict[str, Any]:
    """Prepares `data_config.corpus` into `output_dir` in this process and `prepare_workers` others; returns its
    manifest.

    Idempotent: a finished directory is returned as it is once its shards match the manifest (sizes; sha256 too
    with `checksums` or config.data.verify_checksums), and a damaged shard is prepared again; a partial one is
    completed without redoing finished units and shards.
    """
    plan = begin(data_config, output_dir, checksums=checksums)
    if isinstance(plan, dict):
        return plan
    started = time.time()
    workers = data_config_lib.read(data_config).prepare_workers or available_cores()
    unit_counts = _run_pass(
        "tokenizing", [(tokenize_unit, (plan, i), unit_done(output_dir, i)) for i in range(len(plan.units))],
        workers=workers, unit="unit", count_key="documents")
    corpus_totals(plan, unit_counts, check=True)
    jobs = shard_jobs(plan, unit_counts)
    for split in dict.fromkeys(split for split, _, _ in jobs):
        _run_pass(f"instances ({split})",
                  [(instances_shard, (plan, *job), shard_done(output_dir, *job)) for job in jobs if job[0] == split],
                  workers=workers, unit="shard", count_key="instances")
    manifest = finish(plan, unit_counts)
    logging.info("prepared %s in %.1f s", output_dir, time.time() - started)
    return manifest


def available_cores() -> int:
    """The cores this process may run on (a container's or taskset's share, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def begin(data_config: ml_collections.ConfigDict, output_dir: str, *, checksums: bool) -> "dict[str, Any] | Plan":
    """The finished directory's manifest when it is whole; else the directory made ready (settings.json and the
    work-unit plan written, damaged shards removed) and the `Plan` that the passes carry out."""
    data_config = data_config_lib.read(data_config)
    data_config_lib.require_sources(data_config)
    tokenizer = load_tokenizer(data_config.tokenizer)
    settings = _settings(data_config, tokenizer)
    manifest_path = os.path.join(output_dir, manifest_lib.MANIFEST)
    if storage.path(manifest_path).is_file():
        manifest = manifest_lib.load_manifest(output_dir)
        manifest_lib.check_same_settings(manifest_path, manifest["settings"], settings)
        damaged = manifest_lib.damaged_shards(output_dir, manifest,
                                              checksums=checksums or data_config.verify_checksums)
        if not damaged:
            logging.info("reusing prepared data in %s", output_dir)
            return manifest
        # Never reused as it is: the damaged shards (and the manifest, written last) go, and the run below
        # prepares exactly those again from the tokenized documents.
        logging.warning("prepared data damaged, preparing those shards again: %s",
                        manifest_lib.describe_damage(output_dir, damaged))
        for name in damaged:
            storage.path(output_dir, name).unlink(missing_ok=True)
            storage.path(output_dir, name.removesuffix(".array_record") + ".json").unlink(missing_ok=True)
        storage.path(manifest_path).unlink()
    settings_path = os.path.join(output_dir, manifest_lib.SETTINGS)
    _check_target(output_dir, settings_path)
    storage.path(output_dir, DOCUMENTS_DIR).mkdir(parents=True, exist_ok=True)
    # With the record format: finished shards of an older layout must not be continued in this one.
    started_with = {**settings, "format_version": manifest_lib.FORMAT_VERSION}
    if storage.path(settings_path).is_file():
        manifest_lib.check_same_settings(settings_path, manifest_lib.read_json(settings_path), started_with)
        logging.info("continuing the unfinished preparation in %s", output_dir)
    else:
        manifest_lib.write_json_atomic(settings_path, started_with)
    units = plan_units(data_config.corpus, corpus_format=data_config.corpus_format,
                       tfds_data_dir=data_config.tfds_data_dir, tfds_text_field=data_config.tfds_text_field,
                       unit_bytes=data_config.unit_bytes, tfds_examples_per_unit=data_config.tfds_examples_per_unit)
    _check_same_plan(output_dir, units)
    return Plan(output_dir=output_dir, settings=settings, units=tuple(units), tokenizer=data_config.tokenizer,
                tokenizer_facts={"spec": data_config.tokenizer, "content_hash": tokenizer.content_hash,
                                 "vocab_size": tokenizer.vocab_size})


# `data.num_shards = 0`: one instance shard per this many tokens of a split (times dupe_factor), about 128 MiB of
# uint16 ids, so the shard count (and the parallelism of the instance pass) grows with the corpus.
SHARD_TOKENS = 1 << 26


def derived_num_shards(requested: int, split_documents: int, corpus_documents: int, corpus_tokens: int,
                       dupe_factor: int) -> int:
    """`requested`, or with 0 ceil(split's share of the corpus tokens x dupe_factor / SHARD_TOKENS); never more
    shards than the split has documents, never fewer than one."""
    if not requested:
        split_tokens = corpus_tokens * dupe_factor * split_documents
        requested = max(1, -(-split_tokens // (corpus_documents * SHARD_TOKENS)))
    return min(requested, split_documents)


def corpus_totals(plan: Plan, unit_counts: Sequence[dict[str, Any]], *, check: bool = False) -> dict[str, Any]:
    skips = SkipLog()
    for c in unit_counts:
        skips.merge(c["skipped"])
    corpus = {"units": len(unit_counts),
              **{k: int(sum(c[k] for c in unit_counts)) for k in ("documents", "sentences", "tokens")},
              "skipped": skips.to_dict()}
    if check and corpus["documents"] == 0:
        raise DataError(f"corpus {plan.settings['corpus']!r} yielded no documents "
                        f"(skipped: {corpus['skipped']['counts'] or 'nothing'}); check the path and corpus_format")
    return corpus


def shard_jobs(plan: Plan, unit_counts: Sequence[dict[str, Any]]) -> list[tuple[str, int, int]]:
    """(split, shard, num_shards) of every instance shard, in the manifest's order; none for an empty corpus."""
    corpus = corpus_totals(plan, unit_counts)
    if not corpus["documents"]:
        return []
    s = plan.settings
    jobs = []
    for split, docs in _split_documents(corpus["documents"], s["held_out_fraction"], s["seed"]).items():
        if len(docs):
            n = derived_num_shards(s["num_shards"], len(docs), corpus["documents"], corpus["tokens"],
                                   s["dupe_factor"])
            jobs += [(split, shard, n) for shard in range(n)]
    return jobs


def finish(plan: Plan, unit_counts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Writes the manifest (last) from the units' and shards' done-files, and returns it."""
    corpus = corpus_totals(plan, unit_counts, check=True)
    output_dir = plan.output_dir
    jobs = shard_jobs(plan, unit_counts)
    splits = {}
    for split in dict.fromkeys(split for split, _, _ in jobs):
        mine = [job for job in jobs if job[0] == split]
        shard_counts = [manifest_lib.read_json(shard_done(output_dir, *job)) for job in mine]
        shards = [os.path.basename(_shard_path(output_dir, *job)) + ".array_record" for job in mine]
        splits[split] = {
            "documents": int(sum(c["documents"] for c in shard_counts)),
            "shards": shards,
            # What the loader and a later prepare check the files against (data/manifest.py).
            "files": {name: manifest_lib.shard_facts(os.path.join(output_dir, name)) for name in shards},
            **{k: int(sum(c[k] for c in shard_counts)) for k in ("instances", "random_next", "tokens")},
        }
    manifest = {
        "format_version": manifest_lib.FORMAT_VERSION,
        "settings": plan.settings,
        "tokenizer": plan.tokenizer_facts,
        "corpus": corpus,
        "splits": splits,
    }
    manifest_lib.write_json_atomic(os.path.join(output_dir, manifest_lib.MANIFEST), manifest)
    logging.info("prepared %s: %s", output_dir, {s: v["instances"] for s, v in splits.items()})
    return manifest


def read_unit_counts(plan: Plan) -> list[dict[str, Any]]:
    """The units' done-files, in order (after a pass that ran elsewhere, e.g. on Beam workers)."""
    return [manifest_lib.read_json(unit_done(plan.output_dir, i)) for i in range(len(plan.units))]


def _check_target(output_dir: str, settings_path: str) -> None:
    """Prepares only into a new or empty directory, or one a preparation began (its settings.json written first)."""
    if storage.path(settings_path).is_file():
        return
    # No --overwrite here: mixing shards into another directory's files helps no one; deleting them is for a person.
    output_paths.check_directory(output_dir, "config.data.prepared_dir", "data.prepare", has_overwrite_flag=False)


# The config.data fields that fix the prepared data (with the tokenizer's hash): a stage reuses a prepared_dir only
# when they are equal.
SETTINGS_FIELDS = ("corpus", "corpus_format", "tfds_text_field", "max_line_bytes", "unit_bytes",
                   "tfds_examples_per_unit", "max_seq_length", "short_seq_prob", "dupe_factor", "held_out_fraction",
                   "num_shards", "seed")


def _settings(c: ml_collections.ConfigDict, tokenizer: Tokenizer) -> dict[str, Any]:
    if c.max_seq_length < 5:
        raise DataError(f"data.max_seq_length must be at least 5 ([CLS] a [SEP] b [SEP]), got {c.max_seq_length}")
    if not 0.0 <= c.short_seq_prob <= 1.0:
        raise DataError(f"data.short_seq_prob must be in [0, 1], got {c.short_seq_prob}")
    if not 0.0 <= c.held_out_fraction < 1.0:
        raise DataError(f"data.held_out_fraction must be in [0, 1), got {c.held_out_fraction}")
    if c.dupe_factor < 1 or c.num_shards < 0:
        raise DataError(f"data.dupe_factor must be >= 1 and data.num_shards >= 0 (0: from the corpus size), got "
                        f"{c.dupe_factor}, {c.num_shards}")
    settings = {**{field: c[field] for field in SETTINGS_FIELDS}, "tokenizer_hash": tokenizer.content_hash,
                "token_dtype": records.token_dtype_for(tokenizer.vocab_size)}
    if "builtin:" in c.corpus:
        settings["builtin_corpus_version"] = python_docs.corpus_version()
    return settings


def _check_same_plan(output_dir: str, units: Sequence[WorkUnit]) -> None:
    """A restart must see the corpus it started on, or finished units would number documents wrongly."""
    path = os.path.join(output_dir, DOCUMENTS_DIR, "plan.json")
    plan = [u.describe() for u in units] + [f"{len(units)} units"]
    if storage.path(path).is_file():
        found = manifest_lib.read_json(path)
        if found != plan:
            changed = next((f"{a!r} became {b!r}" for a, b in zip(found, plan) if a != b), "")
            raise DataError(f"{path}: the corpus changed since this preparation began ({changed}); "
                            "delete the directory to prepare again")
    else:
        manifest_lib.write_json_atomic(path, plan)


Job = tuple[Callable[..., dict[str, Any]], tuple, str]  # function, arguments, its done-file


def _run_pass(name: str, jobs: Sequence[Job], *, workers: int, unit: str, count_key: str) -> list[dict[str, Any]]:
    """Runs the jobs whose done-file is missing, in `workers` processes, with a progress bar."""
    results: dict[int, dict[str, Any]] = {}
    pending = []
    for i, (_, _, done) in enumerate(jobs):
        if storage.path(done).is_file():
            results[i] = manifest_lib.read_json(done)
        else:
            pending.append(i)
    if len(jobs) - len(pending):
        logging.info("%s: %d of %d %ss already done", name, len(jobs) - len(pending), len(jobs), unit)
    total = 0
    # The bar is for a terminal; a log file gets lines (one per tenth of the jobs), never carriage returns.
    on_terminal = _is_terminal(sys.stderr)
    every = max(1, -(-len(jobs) // 10))
    started = time.monotonic()
    with tqdm(total=len(jobs), initial=len(jobs) - len(pending), desc=name, unit=unit, dynamic_ncols=True,
              disable=not on_terminal) as bar:
        def finished(i: int, counts: dict[str, Any]) -> None:
            nonlocal total
            results[i] = counts
            total += counts[count_key]
            bar.set_postfix({count_key: total}, refresh=False)
            bar.update()
            if len(results) % every == 0 or len(results) == len(jobs):
                # With the bar on the terminal, the line goes to the log file alone (cli.FILE_ONLY).
                # The rate and ETA over this run's jobs, as the bar shows them.
                ran, seconds = len(results) - (len(jobs) - len(pending)), time.monotonic() - started
                rate = ran / seconds if seconds > 0 else 0.0
                eta = f", ETA {(len(jobs) - len(results)) / rate:.0f} s" if rate > 0 and len(results) < len(jobs) else ""
                logging.info("%s: %d of %d %ss done (%s %d in this run), %.2f %s/s%s", name, len(results), len(jobs),
                             unit, count_key, total, rate, unit, eta, extra=cli.FILE_ONLY if on_terminal else None)

        if workers <= 1 or len(pending) <= 1:
            for i in pending:
                fn, args, _ = jobs[i]
                finished(i, fn(*args))
        else:
            # spawn: no forked copies of tokenizer thread pools or JAX state. Ctrl-C reaches the whole process
            # group: the workers ignore it (no traceback from each) and this process ends them; every file is
            # written atomically, so a rerun redoes only the jobs without a done-file.
            with concurrent.futures.ProcessPoolExecutor(
                    max_workers=min(workers, len(pending)), mp_context=multiprocessing.get_context("spawn"),
                    initializer=_ignore_interrupts) as pool:
                try:
                    futures = {pool.submit(jobs[i][0], *jobs[i][1]): i for i in pending}
                    for future in concurrent.futures.as_completed(futures):
                        finished(futures[future], future.result())
                except KeyboardInterrupt:
                    workers_left = list(getattr(pool, "_processes", {}).values())
                    pool.shutdown(wait=False, cancel_futures=True)
                    for process in workers_left:
                        process.terminate()
                    raise
    return [results[i] for i in range(len(jobs))]


def _ignore_interrupts() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _is_terminal(stream: Any) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or closed
        return False


def _unit_path(output_dir: str, index: int) -> str:
    return os.path.join(output_dir, DOCUMENTS_DIR, f"unit-{index:05d}")


def unit_done(output_dir: str, index: int) -> str:
    return _unit_path(output_dir, index) + ".json"


def _shard_path(output_dir: str, split: str, shard: int, num_shards: int) -> str:
    return os.path.join(output_dir, f"{split}-{shard:05d}-of-{num_shards:05d}")


def shard_done(output_dir: str, split: str, shard: int, num_shards: int) -> str:
    return _shard_path(output_dir, split, shard, num_shards) + ".json"


_TOKENIZERS: dict[str, Tokenizer] = {}


def _tokenizer(spec: str) -> Tokenizer:
    if spec not in _TOKENIZERS:
        _TOKENIZERS[spec] = load_tokenizer(spec)
    return _TOKENIZERS[spec]


def tokenize_unit(plan: Plan, index: int) -> dict[str, Any]:
    """Pass 1 for one work unit: its tokenized documents and, once they are complete, its done-file (the counts)."""
    tokenizer = _tokenizer(plan.tokenizer)
    unit = plan.units[index]
    skips = SkipLog()
    path = _unit_path(plan.output_dir, index)
    with storage.staged_write(path + ".array_record") as local:
        counts = _write_unit(local, unit, tokenizer, skips, plan.settings["max_line_bytes"],
                             plan.settings["token_dtype"])
    result = {**counts, "unit": unit.describe(), "skipped": skips.to_dict()}
    manifest_lib.write_json_atomic(path + ".json", result)
    return result


def _write_unit(local: str, unit: WorkUnit, tokenizer: Tokenizer, skips: SkipLog, max_line_bytes: int,
                token_dtype: str) -> dict[str, int]:
    counts = {"documents": 0, "sentences": 0, "tokens": 0}
    writer = ArrayRecordWriter(local, ARRAY_RECORD_OPTIONS)
    for doc_no, document in enumerate(read_unit(unit, skips, max_line_bytes=max_line_bytes)):
        sentences = [np.asarray(ids, np.int32) for ids in tokenizer.encode_batch(document)]
        kept = [s for s in sentences if len(s)]
        if len(kept) < len(sentences):
            skips.add("empty_sentence", f"{unit.describe()} document {doc_no}", "no tokens",
                      count=len(sentences) - len(kept))
        if not kept:
            skips.add("empty_document", f"{unit.describe()} document {doc_no}", "no tokens")
            continue
        writer.write(records.encode_document(kept, token_dtype))
        counts["documents"] += 1
        counts["sentences"] += len(kept)
        counts["tokens"] += sum(len(s) for s in kept)
    writer.close()
    return counts


def _split_documents(num_documents: int, held_out_fraction: float, seed: int) -> dict[str, np.ndarray]:
    """Held-out documents by a seeded draw per document; at least one each way when the fraction is > 0."""
    draws = rng(seed, Stream.SPLIT).random(num_documents)
    held_out = draws < held_out_fraction
    if held_out_fraction > 0:
        if num_documents < 2:
            raise DataError(f"held_out_fraction={held_out_fraction} needs at least 2 documents, the corpus has "
                            f"{num_documents}; set data.held_out_fraction=0")
        if not held_out.any():
            held_out[np.argmin(draws)] = True
        if held_out.all():
            held_out[np.argmax(draws)] = False
    return {"train": np.flatnonzero(~held_out), "eval": np.flatnonzero(held_out)}


class _DocumentReader:
    """Random access to every tokenized document by global index (units concatenated in order)."""

    def __init__(self, paths: Sequence[str], token_dtype: str):
        import grain
        self._source = grain.sources.ArrayRecordDataSource([storage.local_copy(p) for p in paths])
        self._token_dtype = token_dtype

    def __len__(self) -> int:
        return len(self._source)

    def __call__(self, index: int) -> list[np.ndarray]:
        return records.decode_document(self._source[index], self._token_dtype)


def instances_shard(plan: Plan, split: str, shard: int, num_shards: int) -> dict[str, Any]:
    """Pass 2 for one shard: its instances and, once they are complete, its done-file (the counts)."""
    settings, output_dir = plan.settings, plan.output_dir
    doc_paths = [_unit_path(output_dir, i) + ".array_record" for i in range(len(plan.units))]
    reader = _DocumentReader(doc_paths, settings["token_dtype"])
    docs = _split_documents(len(reader), settings["held_out_fraction"], settings["seed"])[split]
    mine = docs[len(docs) * shard // num_shards: len(docs) * (shard + 1) // num_shards]
    counts = {"instances": 0, "random_next": 0, "tokens": 0}
    path = _shard_path(output_dir, split, shard, num_shards)
    with storage.staged_write(path + ".array_record") as local:
        _write_instances(local, mine, docs, reader, settings, counts)
    manifest_lib.write_json_atomic(path + ".json", {**counts, "documents": int(len(mine))})
    return counts


def _write_instances(local: str, mine: np.ndarray, docs: np.ndarray, reader: "_DocumentReader",
                     settings: dict[str, Any], counts: dict[str, int]) -> None:
    writer = ArrayRecordWriter(local, ARRAY_RECORD_OPTIONS)
    for dupe in range(settings["dupe_factor"]):
        for doc_index in mine.tolist():
            for instance in create_instances_from_document(
                    doc_index, reader(doc_index), docs, reader, seed=settings["seed"], dupe=dupe,
                    max_seq_length=settings["max_seq_length"], short_seq_prob=settings["short_seq_prob"]):
                writer.write(records.encode_instance(instance, settings["token_dtype"]))
                counts["instances"] += 1
                counts["random_next"] += int(instance.is_random_next)
                counts["tokens"] += len(instance.tokens_a) + len(instance.tokens_b)
    writer.close()


def split_beam_args(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """(this command's argv, the Beam pipeline options): --config, --config.X and absl's own flags are ours, the
    rest Beam's when a --runner is among them; without one everything stays ours (an unknown flag is refused)."""
    from absl import flags

    ours, beam_args = [argv[0]], []
    target = ours
    for arg in argv[1:]:
        if arg.startswith("-"):
            name = arg.lstrip("-").split("=", 1)[0]
            target = ours if name == "config" or name.startswith("config.") or name in flags.FLAGS else beam_args
        target.append(arg)
    if not any(a.lstrip("-").split("=", 1)[0] == "runner" for a in beam_args):
        return ours + beam_args, []
    return ours, beam_args


def main(argv: Optional[list[str]] = None) -> None:
    from mobilebert_jax import cli, experiment_config

    argv, beam_args = split_beam_args(list(sys.argv if argv is None else argv))

    def run(parsed: tuple[ml_collections.ConfigDict, list[str]]) -> None:
        config, _ = parsed
        if "corpus" not in (config.get("data") or {}):
            raise ConfigError(f"the config's stage ({config.get('stage')}) reads no pretraining corpus (no "
                              "config.data.corpus): prepare takes a pretraining or distillation config "
                              "(experiments/teacher_ib_bert_large.py, experiments/distill_*.py)")
        data = data_config_lib.read(config.data)
        if not data.prepared_dir:
            raise ConfigError("config.data.prepared_dir is empty: set --config.data.prepared_dir=DIR (where the data "
                              "goes; the stage reads it from there given the same flag)")
        logging.getLogger().setLevel(logging.INFO)
        if beam_args:
            from mobilebert_jax.data.beam_prepare import prepare_on_beam
            manifest = prepare_on_beam(data, data.prepared_dir, beam_args, checksums=True)
        else:
            manifest = prepare(data, data.prepared_dir, checksums=True)  # the command checks every byte
        print(json.dumps({"prepared_dir": data.prepared_dir, "tokenizer": manifest["tokenizer"],
                          "corpus": {k: v for k, v in manifest["corpus"].items() if k != "skipped"},
                          "skipped": manifest["corpus"]["skipped"]["counts"],
                          "splits": {s: {k: v for k, v in d.items() if k != "shards"}
                                     for s, d in manifest["splits"].items()}}, indent=1))

    cli.run_absl(run, flags_parser=experiment_config.absl_flags_parser, argv=argv, doc=__doc__)


if __name__ == "__main__":
    main()
