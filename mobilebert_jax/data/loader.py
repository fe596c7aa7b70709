"""The grain pipeline the trainer consumes: deterministic, resumable, split across hosts.

Global example stream: position p of the stream is example
`shuffle_{seed, epoch}(p mod N)` of the split, with epoch = p // N (grain's
index shuffle, a fresh permutation each epoch). Global batch t is positions
[t*B, (t+1)*B); host h of H takes rows [h*B/H, (h+1)*B/H) of it, so the hosts'
rows together are the one-host batch. Masks come from (seed, mask epoch,
example index), the mask epoch being the epoch with dynamic masking and 0
without (static: an example keeps its masks in every epoch). The grain
iterator's state is just the next global batch index, the same on every
host, so a restored iterator continues with exactly the batches the
uninterrupted one would have produced, on any number of hosts.
"""

from __future__ import annotations

import sys
from typing import Any, Optional

import grain
import ml_collections
import numpy as np

from mobilebert_jax.data import records
from mobilebert_jax.data.manifest import damaged_shards, describe_damage, load_manifest
from mobilebert_jax.data.masking import FEATURE_DTYPES, Masker, stack_features
from mobilebert_jax.data.randomness import Stream, rng
from mobilebert_jax.data.tokenizers import load_tokenizer
from mobilebert_jax.errors import DataError

SPLITS = ("train", "eval")


class HostBatches:
    """Batch index -> this host's rows of that global batch (a picklable function for grain workers)."""

    def __init__(self, source: Any, num_examples: int, masker: Masker, token_dtype: str, format_version: int, *,
                 seed: int, dynamic_masking: bool, global_batch_size: int, process_index: int, process_count: int,
                 num_positions: Optional[int]):
        self.source = source
        self.num_examples = num_examples
        self.masker = masker
        self.token_dtype = token_dtype
        self.format_version = format_version  # the manifest's: how the instance records are laid out
        self.seed = seed
        self.dynamic_masking = dynamic_masking
        self.global_batch_size = global_batch_size
        self.host_batch_size = global_batch_size // process_count
        self.row_offset = process_index * self.host_batch_size
        self.num_positions = num_positions  # None: the stream never ends
        # grain's index shuffle wants a 32-bit seed; the order and the masks both follow `seed`.
        self.order = grain.MapDataset.range(num_examples).shuffle(seed=seed % (1 << 32))

    def positions(self, batch_index: int) -> np.ndarray:
        start = batch_index * self.global_batch_size + self.row_offset
        return np.arange(start, start + self.host_batch_size)

    def example_indices(self, positions: np.ndarray) -> np.ndarray:
        return np.array([self.order[int(p)] % self.num_examples for p in positions], dtype=np.int64)

    def __call__(self, batch_index: int) -> dict[str, np.ndarray]:
        positions = self.positions(batch_index)
        real = positions < self.num_positions if self.num_positions is not None else np.ones(len(positions), bool)
        indices = self.example_indices(positions[real])
        raw = self.source.__getitems__(indices.tolist()) if len(indices) else []
        examples = []
        for p, index, record in zip(positions[real].tolist(), indices.tolist(), raw):
            epoch = p // self.num_examples if self.dynamic_masking else 0
            instance = records.decode_instance(record, self.token_dtype, self.format_version)
            examples.append(self.masker.features(instance, rng(self.seed, Stream.MASKS, epoch, index)))
        examples += [_padding_example(self.masker)] * int((~real).sum())
        return stack_features(examples)


def _padding_example(masker: Masker) -> dict[str, np.ndarray]:
    """A row that carries no data: input_mask and masked_lm_weights all zero."""
    example = {k: np.zeros(masker.max_seq_length, dtype) for k, dtype in FEATURE_DTYPES.items()
               if k in ("input_ids", "input_mask", "segment_ids")}
    example.update({k: np.zeros(masker.max_predictions_per_seq, dtype) for k, dtype in FEATURE_DTYPES.items()
                    if k.startswith("masked_lm")})
    example["next_sentence_labels"] = np.int32(0)
    return example


def make_pretraining_loader(
    data_config: ml_collections.ConfigDict,
    *,
    split: str,
    global_batch_size: int,
    process_index: int,
    process_count: int,
    seed: int,
    num_epochs: Optional[int] = None,
    pad_final_batch: bool = False,
) -> grain.DatasetIterator:
    """This host's batches: a grain iterator of dicts of numpy arrays, `[global_batch_size // process_count, ...]`.

    `get_state()`/`set_state()` save and restore the position; the iterator is
    also a `grain.DatasetIterator`, which `grain.checkpoint.CheckpointSave` /
    `CheckpointRestore` write with orbax. With `num_epochs` set, the stream
    ends after that many epochs: the last partial global batch is dropped, or
    with `pad_final_batch` filled with padding rows (input_mask and
    masked_lm_weights all zero).
    """
    batches = make_pretraining_dataset(
        data_config, split=split, global_batch_size=global_batch_size, process_index=process_index,
        process_count=process_count, seed=seed, num_epochs=num_epochs, pad_final_batch=pad_final_batch)
    ds = batches.to_iter_dataset(grain.ReadOptions(num_threads=data_config.loader_threads,
                                                   prefetch_buffer_size=data_config.prefetch_buffer_size))
    if data_config.loader_workers > 0:
        from absl import flags
        if not flags.FLAGS.is_parsed():
            # grain's worker processes read absl flags; outside `app.run` (tests, notebooks) use their defaults.
            flags.FLAGS.mark_as_parsed()
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=data_config.loader_workers))
    return iter(ds)


def make_pretraining_dataset(data_config: ml_collections.ConfigDict, *, split: str, global_batch_size: int,
                             process_index: int, process_count: int, seed: int, num_epochs: Optional[int] = None,
                             pad_final_batch: bool = False) -> grain.MapDataset:
    """The same batches as a random-access `grain.MapDataset` (element t is this host's part of batch t)."""
    if split not in SPLITS:
        raise DataError(f"split must be one of {SPLITS}, not {split!r}")
    if process_count < 1 or not 0 <= process_index < process_count:
        raise DataError(f"process_index {process_index} is not in [0, process_count={process_count})")
    if global_batch_size < 1 or global_batch_size % process_count:
        raise DataError(f"global_batch_size {global_batch_size} must be a positive multiple of "
                        f"process_count {process_count}")
    if num_epochs is not None and num_epochs < 1:
        raise DataError(f"num_epochs must be None (forever) or >= 1, got {num_epochs}")
    if not 0 < data_config.masked_lm_prob < 1 or data_config.max_predictions_per_seq < 1:
        raise DataError(f"data.masked_lm_prob must be in (0, 1) and data.max_predictions_per_seq >= 1, got "
                        f"{data_config.masked_lm_prob}, {data_config.max_predictions_per_seq}")
    manifest = load_manifest(data_config.prepared_dir)
    tokenizer = load_tokenizer(data_config.tokenizer)
    if tokenizer.content_hash != manifest["tokenizer"]["content_hash"]:
        raise DataError(
            f"{data_config.prepared_dir} was prepared with tokenizer {manifest['tokenizer']['spec']!r} "
            f"(hash {manifest['tokenizer']['content_hash']}), but data.tokenizer is {data_config.tokenizer!r} "
            f"(hash {tokenizer.content_hash}); prepare the data again with this tokenizer")
    settings = manifest["settings"]
    if settings["max_seq_length"] != data_config.max_seq_length:
        raise DataError(f"{data_config.prepared_dir} holds instances for max_seq_length "
                        f"{settings['max_seq_length']}, data.max_seq_length is {data_config.max_seq_length}")
    if split not in manifest["splits"]:
        raise DataError(f"{data_config.prepared_dir} has no {split!r} split (held_out_fraction="
                        f"{settings['held_out_fraction']}); splits: {sorted(manifest['splits'])}")
    info = manifest["splits"][split]
    only_split = {"splits": {split: info}}
    # Before any record is read: a shard cut short would otherwise fail deep inside the reader, mid-training.
    damaged = damaged_shards(data_config.prepared_dir, only_split, checksums=data_config.verify_checksums)
    if damaged:
        raise DataError(_damage_message(data_config.prepared_dir, damaged))
    # Read where they lie: ArrayRecord opens gs:// shards itself (riegeli's GcsReader, the google-cloud-cpp client:
    # a shard's index once per process, then one ranged read per record), so a host fetches only the records of
    # its own rows, as its batches ask for them, and keeps nothing on disk.
    paths = [f"{data_config.prepared_dir}/{name}" for name in info["shards"]]
    source = grain.sources.ArrayRecordDataSource(paths)
    if len(source) != info["instances"]:
        raise DataError(f"{data_config.prepared_dir}: the {split} shards hold {len(source)} instances, the "
                        f"manifest says {info['instances']}; the directory was changed after preparation")
    masker = Masker(max_seq_length=data_config.max_seq_length,
                    max_predictions_per_seq=data_config.max_predictions_per_seq,
                    masked_lm_prob=data_config.masked_lm_prob, whole_word_masking=data_config.whole_word_masking,
                    vocab_size=tokenizer.vocab_size, cls_id=tokenizer.cls_id, sep_id=tokenizer.sep_id,
                    mask_id=tokenizer.mask_id, word_start_table=tokenizer.word_start_table)
    num_positions = None if num_epochs is None else num_epochs * info["instances"]
    if num_positions is None:
        num_batches = sys.maxsize // global_batch_size - 1
    elif pad_final_batch:
        num_batches = -(-num_positions // global_batch_size)
    else:
        num_batches = num_positions // global_batch_size
        if num_batches == 0:
            raise DataError(f"the {split} split has {info['instances']} instances: {num_epochs} epoch(s) make no "
                            f"full global batch of {global_batch_size}; use pad_final_batch=True or more data")
    host_batches = HostBatches(source, info["instances"], masker, settings["token_dtype"],
                               manifest["format_version"], seed=seed,
                               dynamic_masking=data_config.dynamic_masking, global_batch_size=global_batch_size,
                               process_index=process_index, process_count=process_count,
                               num_positions=num_positions)
    return grain.MapDataset.range(num_batches).map(host_batches)


def _damage_message(prepared_dir: str, damaged: dict[str, str]) -> str:
    return (f"prepared data damaged: {describe_damage(prepared_dir, damaged)}; run python -m "
            "mobilebert_jax.data.prepare with the same config to prepare the damaged shards again")

