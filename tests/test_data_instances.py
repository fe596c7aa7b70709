"""Statistics of instances and masks made from the real WikiText corpora with the MobileBERT vocabulary."""

from __future__ import annotations

import grain
import numpy as np
import pytest

from mobilebert_jax.data import records
from mobilebert_jax.data.loader import make_pretraining_loader
from mobilebert_jax.data.prepare import _split_documents, prepare
from mobilebert_jax.data.tokenizers import load_tokenizer
from tests.data_fixtures import CORPUS, VOCAB, bert_config, require_shared_data

CLS, SEP, MASK = 101, 102, 103


@pytest.fixture(scope="module")
def wikitext(tmp_path_factory):
    require_shared_data()
    out = str(tmp_path_factory.mktemp("wikitext128"))
    config = bert_config(corpus=f"{CORPUS}/wikitext-2-raw-test.txt,{CORPUS}/wikitext-2-valid.tokens",
                         corpus_format="wikitext", held_out_fraction=0.05, num_shards=3, prepared_dir=out)
    manifest = prepare(config, out)
    return config, manifest


def _documents(out, manifest):
    paths = [f"{out}/documents/unit-{i:05d}.array_record" for i in range(manifest["corpus"]["units"])]
    source = grain.sources.ArrayRecordDataSource(paths)
    dtype = manifest["settings"]["token_dtype"]
    return [np.concatenate(records.decode_document(source[i], dtype)) for i in range(len(source))]


def _instances(out, manifest, split):
    source = grain.sources.ArrayRecordDataSource([f"{out}/{s}" for s in manifest["splits"][split]["shards"]])
    return [records.decode_instance(source[i], manifest["settings"]["token_dtype"], manifest["format_version"])
            for i in range(len(source))]


def _find(haystack: np.ndarray, needle: np.ndarray) -> list[int]:
    """Every start at which `needle` occurs contiguously in `haystack`."""
    if len(needle) > len(haystack):
        return []
    windows = np.lib.stride_tricks.sliding_window_view(haystack, len(needle))
    return np.flatnonzero((windows == needle).all(axis=1)).tolist()


class _Occurrences:
    """Where a token sequence occurs in a set of documents: {document: [starts]}, through an index of 3-grams."""

    def __init__(self, docs: dict[int, np.ndarray]):
        self.docs, self.index = docs, {}
        for d, tokens in docs.items():
            for start in range(len(tokens) - 2):
                self.index.setdefault(tuple(tokens[start:start + 3].tolist()), set()).add(d)

    def __call__(self, needle: np.ndarray) -> dict[int, list[int]]:
        candidates = self.index.get(tuple(needle[:3].tolist()), set()) if len(needle) >= 3 else self.docs
        found = {d: _find(self.docs[d], needle) for d in candidates}
        return {d: starts for d, starts in found.items() if starts}


def test_manifest_counts_the_corpus(wikitext):
    config, manifest = wikitext
    assert manifest["tokenizer"]["content_hash"] == load_tokenizer(str(VOCAB)).content_hash
    corpus = manifest["corpus"]
    assert corpus["documents"] > 100 and corpus["sentences"] > 10_000 and corpus["tokens"] > 400_000
    assert corpus["skipped"]["counts"] == {}
    splits = manifest["splits"]
    assert splits["train"]["documents"] + splits["eval"]["documents"] == corpus["documents"]
    assert 0 < splits["eval"]["documents"] < 0.12 * corpus["documents"]
    assert splits["train"]["instances"] > 3000


@pytest.mark.parametrize("split", ["train", "eval"])
def test_segments_come_from_the_right_documents(wikitext, split):
    """Segment A from a document of the split; B after A in the same document, or (random next) from another
    document of the same split, never the other split. Records hold no document indices: each segment is looked
    up in the documents."""
    config, manifest = wikitext
    docs = _documents(config.prepared_dir, manifest)
    settings = manifest["settings"]
    split_docs = _split_documents(len(docs), settings["held_out_fraction"], settings["seed"])[split]
    assert len(split_docs) == manifest["splits"][split]["documents"]
    occurrences = _Occurrences({int(d): docs[d] for d in split_docs})
    for inst in _instances(config.prepared_dir, manifest, split)[:1500]:
        assert 1 <= len(inst.tokens_a) and 1 <= len(inst.tokens_b)
        assert len(inst.tokens_a) + len(inst.tokens_b) <= config.max_seq_length - 3
        in_a, in_b = occurrences(inst.tokens_a), occurrences(inst.tokens_b)
        assert in_a and in_b  # random segments never cross into the other split
        if inst.is_random_next:
            assert not (len(in_a) == 1 and set(in_b) == set(in_a))
        else:
            assert any(b >= a + len(inst.tokens_a) for d in set(in_a) & set(in_b) for a in in_a[d] for b in in_b[d])


def test_nsp_balance_and_lengths(wikitext):
    config, manifest = wikitext
    instances = _instances(config.prepared_dir, manifest, "train")
    random_share = np.mean([i.is_random_next for i in instances])
    assert manifest["splits"]["train"]["random_next"] == sum(i.is_random_next for i in instances)
    # BERT's recipe: 50% random, plus every chunk of a single sentence, so somewhat above one half.
    assert 0.47 < random_share < 0.60, random_share
    lengths = np.array([len(i.tokens_a) + len(i.tokens_b) for i in instances])
    assert np.mean(lengths >= 100) > 0.75  # most fill the 125-token budget ...
    assert 0.02 < np.mean(lengths < 60) < 0.25  # ... short_seq_prob=0.1 makes some short ones


def _epoch_batches(config, **kw):
    loader = make_pretraining_loader(config, split="train", global_batch_size=64, process_index=0,
                                     process_count=1, seed=7, num_epochs=1, **kw)
    return list(loader)


def _original_ids(batch):
    ids = batch["input_ids"].copy()
    rows, cols = np.nonzero(batch["masked_lm_weights"])
    ids[rows, batch["masked_lm_positions"][rows, cols]] = batch["masked_lm_ids"][rows, cols]
    return ids


def test_masks_follow_bert(wikitext):
    config, manifest = wikitext
    batches = _epoch_batches(config)
    assert sum(len(b["next_sentence_labels"]) for b in batches) == manifest["splits"]["train"]["instances"] // 64 * 64
    kinds = np.zeros(3)  # [MASK], kept, random
    labels = []
    for b in batches:
        original = _original_ids(b)
        n_B = b["input_mask"].sum(1)
        k_B = b["masked_lm_weights"].sum(1)
        np.testing.assert_array_equal(k_B, np.minimum(20, np.maximum(1, np.round(n_B * 0.15))))
        for row in range(len(n_B)):
            k, n = int(k_B[row]), int(n_B[row])
            positions = b["masked_lm_positions"][row, :k]
            assert np.all(np.diff(positions) > 0) and positions.min() > 0 and positions.max() < n - 1
            originals = b["masked_lm_ids"][row, :k]
            assert not np.isin(originals, [CLS, SEP, 0]).any()
            # From the unmasked ids: a random replacement may itself be [SEP], as in BERT.
            seps = np.flatnonzero(original[row, :n] == SEP)
            assert len(seps) == 2 and seps[1] == n - 1 and not np.isin(positions, seps).any()
            assert b["input_ids"][row, 0] == CLS and not b["input_ids"][row, n:].any()
            np.testing.assert_array_equal(b["segment_ids"][row], np.r_[np.zeros(seps[0] + 1), np.ones(n - seps[0] - 1),
                                                                       np.zeros(config.max_seq_length - n)])
            shown = b["input_ids"][row, positions]
            kinds += [np.sum(shown == MASK), np.sum(shown == originals), np.sum((shown != MASK) & (shown != originals))]
        labels.append(b["next_sentence_labels"])
    total = kinds.sum()
    assert total > 50_000
    share = kinds / total
    assert abs(share[0] - 0.8) < 0.01 and abs(share[1] - 0.1) < 0.01 and abs(share[2] - 0.1) < 0.01, share
    masked_rate = total / sum(b["input_mask"].sum() for b in batches)
    assert 0.14 < masked_rate < 0.16
    assert 0.47 < np.concatenate(labels).mean() < 0.60


def test_cap_on_predictions_binds(wikitext):
    config, _ = wikitext
    capped = config.copy_and_resolve_references()
    capped.max_predictions_per_seq = 5
    batch = _epoch_batches(capped)[0]
    assert batch["masked_lm_positions"].shape == (64, 5)
    assert np.all(batch["masked_lm_weights"].sum(1) == 5)


def test_whole_word_masking_masks_whole_words(wikitext):
    config, _ = wikitext
    wwm = config.copy_and_resolve_references()
    wwm.whole_word_masking = True
    tokenizer = load_tokenizer(str(VOCAB))
    starts = tokenizer.word_start_table
    continued_words = 0
    for b in _epoch_batches(wwm)[:10]:
        original = _original_ids(b)
        for row in range(len(original)):
            k = int(b["masked_lm_weights"][row].sum())
            masked = set(b["masked_lm_positions"][row, :k].tolist())
            n = int(b["input_mask"][row].sum())
            for p in masked:
                if not starts[original[row, p]] and original[row, p - 1] not in (CLS, SEP):
                    assert p - 1 in masked  # a continuation piece never masked without the piece before it
                    continued_words += 1
                if p + 1 < n - 1 and not starts[original[row, p + 1]] and original[row, p + 1] != SEP:
                    assert p + 1 in masked  # nor a word start without its continuations
    assert continued_words > 20


@pytest.mark.parametrize("dynamic", [True, False])
def test_dynamic_masking_redraws_masks_each_epoch(wikitext, dynamic):
    config, _ = wikitext
    c = config.copy_and_resolve_references()
    c.dynamic_masking = dynamic
    loader = make_pretraining_loader(c, split="eval", global_batch_size=8, process_index=0, process_count=1,
                                     seed=3, num_epochs=2, pad_final_batch=True)
    masks_by_example: dict[bytes, list[bytes]] = {}
    for b in loader:
        original = _original_ids(b)
        for row in range(len(original)):
            if b["input_mask"][row].any():
                masks_by_example.setdefault(original[row].tobytes(), []).append(b["masked_lm_positions"][row].tobytes())
    seen_twice = [m for m in masks_by_example.values() if len(m) == 2]
    assert len(seen_twice) > 20
    same = np.mean([m[0] == m[1] for m in seen_twice])
    assert same < 0.1 if dynamic else same == 1.0
