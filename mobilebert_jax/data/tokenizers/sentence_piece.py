"""SentencePiece models with the BERT special tokens at fixed ids: training and tokenizing."""

from __future__ import annotations

import functools
import logging
import os
import shutil
import tempfile
from typing import Iterable, Sequence

import numpy as np
import sentencepiece as spm

from mobilebert_jax.data.tokenizers.base import SPECIAL_TOKENS, content_hash
from mobilebert_jax import storage
from mobilebert_jax.errors import DataError

# [PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3 [MASK]=4, as ALBERT lays them out.
SPECIAL_IDS = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
WORD_BOUNDARY = "\u2581"  # SentencePiece's "▁": the piece begins a new word


class SentencePieceTokenizer:
    """Tokenizes with a `.model` file trained by `train_sentencepiece` (or laid out the same)."""

    def __init__(self, model_path: str):
        self.spec = model_path
        if not storage.path(model_path).is_file():
            raise DataError(f"{model_path}: SentencePiece model not found")
        proto = storage.path(model_path).read_bytes()
        try:
            self._sp = spm.SentencePieceProcessor(model_proto=proto)
        except RuntimeError as e:
            raise DataError(f"{model_path}: not a SentencePiece model ({e})") from None
        for token, want in SPECIAL_IDS.items():
            got = self._sp.piece_to_id(token)
            if got != want or self._sp.id_to_piece(got) != token:
                raise DataError(
                    f"{model_path}: {token} must have id {want} (has {got}); "
                    "train the model with `python -m mobilebert_jax.data.train_sentencepiece`")
        self.content_hash = content_hash("sentencepiece", _without_training_paths(proto), {})
        self.vocab_size = self._sp.get_piece_size()
        self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id = (
            SPECIAL_IDS[t] for t in SPECIAL_TOKENS)

    def encode(self, text: str) -> list[int]:
        return self._sp.encode(text, out_type=int)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return self._sp.encode(list(texts), out_type=int)

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        pieces = self._sp.encode(text, return_type="proto").pieces
        # SentencePiece reports UTF-8 byte spans; callers index the str by characters.
        char_at_byte = np.zeros(len(text.encode("utf-8")) + 1, dtype=np.int64)
        position = 0
        for i, ch in enumerate(text):
            width = len(ch.encode("utf-8"))
            char_at_byte[position:position + width] = i
            position += width
        char_at_byte[position] = len(text)
        ids = [p.id for p in pieces]
        offsets = [_without_leading_space(text, int(char_at_byte[p.begin]), int(char_at_byte[p.end]))
                   for p in pieces]
        return ids, offsets

    def convert_ids_to_tokens(self, ids: Sequence[int]) -> list[str]:
        return [self._sp.id_to_piece(int(i)) for i in ids]

    def is_word_start(self, token_id: int) -> bool:
        return bool(self.word_start_table[token_id])

    @functools.cached_property
    def word_start_table(self) -> np.ndarray:
        table = np.zeros(self.vocab_size, dtype=bool)
        for i in range(self.vocab_size):
            table[i] = (self._sp.id_to_piece(i).startswith(WORD_BOUNDARY)
                        or self._sp.is_control(i) or self._sp.is_unknown(i))
        return table


def _without_training_paths(proto: bytes) -> bytes:
    # The model records where it was trained from and to; the ids a text becomes do not depend on that.
    from sentencepiece import sentencepiece_model_pb2
    model = sentencepiece_model_pb2.ModelProto()
    model.ParseFromString(proto)
    for field in ("model_prefix", "input"):
        model.trainer_spec.ClearField(field)
    return model.SerializeToString(deterministic=True)


def _without_leading_space(text: str, start: int, end: int) -> tuple[int, int]:
    # A "▁x" piece spans the space before x; WordPiece offsets (and SQuAD answers) do not.
    while start < end - 1 and text[start].isspace():
        start += 1
    return start, end


def train_sentencepiece(
    sentences: Iterable[str],
    model_prefix: str,
    *,
    vocab_size: int,
    model_type: str = "unigram",
    lowercase: bool = True,
    character_coverage: float = 0.9999,
    max_sentences: int = 10_000_000,
    seed: int = 0,
) -> str:
    """Trains on `sentences`; writes `<model_prefix>.model` and `.vocab` (local or gs://); returns the model path.

    One trainer thread and a fixed random seed, so the same sentences always
    give the same model (and content hash). The trainer writes local files only:
    it writes into this host's scratch directory, and the two files are then
    written to `model_prefix`, each whole (a reader never sees half a model).
    """
    if model_type not in ("unigram", "bpe", "char", "word"):
        raise DataError(f"model_type must be unigram, bpe, char or word, not {model_type!r}")
    if vocab_size <= len(SPECIAL_TOKENS):
        raise DataError(f"vocab_size must exceed the {len(SPECIAL_TOKENS)} special tokens, got {vocab_size}")
    counted = _CountingIterator(sentences)
    with tempfile.TemporaryDirectory(dir=storage.scratch_dir()) as tmp:
        _train(counted, os.path.join(tmp, "sp"), vocab_size=vocab_size, model_type=model_type, lowercase=lowercase,
               character_coverage=character_coverage, max_sentences=max_sentences, seed=seed)
        storage.makedirs(storage.path(model_prefix).parent)
        for suffix in (".vocab", ".model"):  # the model last: its presence means both are there
            with storage.staged_write(model_prefix + suffix) as staged:
                shutil.copyfile(os.path.join(tmp, "sp" + suffix), staged)  # not a user path: scratch to scratch
    logging.info("trained %s.model on %d sentences", model_prefix, counted.count)
    return model_prefix + ".model"


def _train(counted: "_CountingIterator", model_prefix: str, *, vocab_size: int, model_type: str, lowercase: bool,
           character_coverage: float, max_sentences: int, seed: int) -> None:
    spm.set_random_generator_seed(seed)
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=counted,
            model_prefix=model_prefix,
            vocab_size=vocab_size,
            model_type=model_type,
            character_coverage=character_coverage,
            normalization_rule_name="nmt_nfkc_cf" if lowercase else "nmt_nfkc",
            pad_id=SPECIAL_IDS["[PAD]"], pad_piece="[PAD]",
            unk_id=SPECIAL_IDS["[UNK]"], unk_piece="[UNK]",
            bos_id=-1, eos_id=-1,
            control_symbols=["[CLS]", "[SEP]", "[MASK]"],
            input_sentence_size=max_sentences,
            shuffle_input_sentence=True,
            num_threads=1,
            minloglevel=2,
        )
    except RuntimeError as e:
        raise DataError(f"SentencePiece training on {counted.count} sentences failed: {e}") from None


class _CountingIterator:
    """Passes sentences through, counting them for the log and for error messages."""

    def __init__(self, sentences: Iterable[str]):
        self._it = iter(sentences)
        self.count = 0

    def __iter__(self):
        return self

    def __next__(self) -> str:
        sentence = next(self._it)
        self.count += 1
        return sentence
