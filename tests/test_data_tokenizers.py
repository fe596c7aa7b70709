"""Tokenizers: WordPiece parity with HF's BertTokenizerFast on real text; SentencePiece training and ids."""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest

from mobilebert_jax.data.tokenizers import SPECIAL_TOKENS, SentencePieceTokenizer, load_tokenizer
from mobilebert_jax.errors import DataError
from tests.data_fixtures import CORPUS, VOCAB, corpus_lines, glue_sentences, require_shared_data
from limits import HANG_S


@pytest.fixture(scope="module")
def hf_bert(tmp_path_factory):
    require_shared_data()
    transformers = pytest.importorskip("transformers")
    folder = tmp_path_factory.mktemp("hf_vocab")
    shutil.copy(VOCAB, folder / "vocab.txt")
    return transformers.BertTokenizerFast.from_pretrained(str(folder), do_lower_case=True)


@pytest.fixture(scope="module")
def wordpiece():
    require_shared_data()
    return load_tokenizer(str(VOCAB))


def _first_difference(ours, theirs, texts):
    for text, a, b in zip(texts, ours, theirs):
        if a != b:
            return f"{text!r}: ours {a} vs HF {b}"
    return None


@pytest.mark.parametrize("source", ["corpora", "glue"])
def test_wordpiece_matches_bert_tokenizer_fast(hf_bert, wordpiece, source):
    texts = corpus_lines() if source == "corpora" else glue_sentences()
    assert len(texts) > (50_000 if source == "corpora" else 100_000)
    theirs = hf_bert(texts, add_special_tokens=False)["input_ids"]
    ours = wordpiece.encode_batch(texts)
    assert _first_difference(ours, theirs, texts) is None


def test_wordpiece_edge_cases_match(hf_bert, wordpiece):
    texts = [
        "Héllo, WORLD! Ça va? naïve façade", "你好世界 and 日本語 text", "tab\there\x00nul\u200bzero-width\x7fdel",
        "x" * 101 + " " + "y" * 100, "[MASK] [CLS]ok[SEP] [unused0]", "don't stop-believing...!?", "",
        "  \n\t  ", "e\u0301 combining", "\ufeffbom", "emoji 😀 and ½ ﬁ ligature",
    ]
    ours = [wordpiece.encode(t) for t in texts]
    theirs = hf_bert(texts, add_special_tokens=False)["input_ids"]
    assert _first_difference(ours, theirs, texts) is None
    assert wordpiece.convert_ids_to_tokens(wordpiece.encode("x" * 101)) == ["[UNK]"]


def test_wordpiece_offsets_match_hf_and_index_the_original_text(hf_bert, wordpiece):
    texts = glue_sentences()[:2000] + ["Héllo, WORLD! 你好"]
    theirs = hf_bert(texts, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    for text, hf_offsets in zip(texts, theirs):
        ids, offsets = wordpiece.encode_with_offsets(text)
        assert ids == wordpiece.encode(text)
        assert offsets == [tuple(o) for o in hf_offsets], text
    ids, offsets = wordpiece.encode_with_offsets("Héllo, WORLD!")
    assert [("Héllo, WORLD!")[a:b] for a, b in offsets] == ["Héllo", ",", "WORLD", "!"]


def test_wordpiece_special_ids_and_word_starts(wordpiece):
    assert wordpiece.vocab_size == 30522
    assert (wordpiece.pad_id, wordpiece.unk_id, wordpiece.cls_id, wordpiece.sep_id, wordpiece.mask_id) == (0, 100, 101, 102, 103)
    pieces = wordpiece.encode("unaffable tokenization")
    tokens = wordpiece.convert_ids_to_tokens(pieces)
    assert [wordpiece.is_word_start(i) for i in pieces] == [not t.startswith("##") for t in tokens]
    assert any(t.startswith("##") for t in tokens)
    assert wordpiece.word_start_table.shape == (30522,)


def test_content_hash_follows_vocabulary_content(tmp_path, wordpiece):
    copy = tmp_path / "copy.txt"
    shutil.copy(VOCAB, copy)
    assert load_tokenizer(str(copy)).content_hash == wordpiece.content_hash
    changed = tmp_path / "changed.txt"
    changed.write_text(VOCAB.read_text(encoding="utf-8").replace("\nthe\n", "\nthe_changed\n", 1), encoding="utf-8")
    assert load_tokenizer(str(changed)).content_hash != wordpiece.content_hash


def test_bad_vocabularies_are_refused_with_the_line(tmp_path):
    lacking = tmp_path / "lacking.txt"
    lacking.write_text("[PAD]\n[UNK]\nhello\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"lacks the special tokens \['\[CLS\]', '\[SEP\]', '\[MASK\]'\]"):
        load_tokenizer(str(lacking))
    repeated = tmp_path / "repeated.txt"
    repeated.write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nhello\nhello\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"repeated.txt:7: token 'hello' repeats line 6"):
        load_tokenizer(str(repeated))
    with pytest.raises(DataError, match="not found"):
        load_tokenizer(str(tmp_path / "missing.txt"))
    with pytest.raises(DataError, match="expected a WordPiece vocab.txt"):
        load_tokenizer(str(tmp_path / "model.bin"))


@pytest.fixture(scope="module")
def botchan_sp(tmp_path_factory):
    require_shared_data()
    prefix = tmp_path_factory.mktemp("sp") / "botchan"
    result = subprocess.run(
        [sys.executable, "-m", "mobilebert_jax.data.train_sentencepiece", f"--corpus={CORPUS / 'botchan.txt'}",
         "--corpus_format=paragraphs", f"--model_prefix={prefix}", "--vocab_size=1000"],
        capture_output=True, text=True, timeout=HANG_S)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "content_hash=" in result.stdout
    return prefix


def test_sentencepiece_cli_trains_a_model_with_fixed_special_ids(botchan_sp):
    tok = load_tokenizer(f"{botchan_sp}.model")
    assert isinstance(tok, SentencePieceTokenizer)
    assert tok.vocab_size == 1000
    assert tok.convert_ids_to_tokens([0, 1, 2, 3, 4]) == list(SPECIAL_TOKENS)
    assert (tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id) == (0, 1, 2, 3, 4)
    text = "I have been a loss-maker since childhood, Botchan said."
    ids, offsets = tok.encode_with_offsets(text)
    assert ids == tok.encode(text)
    assert not set(ids) & {0, 2, 3, 4}
    pieces = tok.convert_ids_to_tokens(ids)
    assert "".join(pieces).replace("\u2581", " ").strip() == text.lower()  # case-folded, nothing lost
    for (start, end), piece in zip(offsets, pieces):
        assert text[start:end].lower() == piece.lstrip("\u2581") or piece == "\u2581"
    assert [tok.is_word_start(i) for i in ids] == [p.startswith("\u2581") for p in pieces]


def test_sentencepiece_training_is_deterministic(botchan_sp, tmp_path):
    from mobilebert_jax.data.train_sentencepiece import train_sentencepiece_from_corpus
    again = train_sentencepiece_from_corpus(str(CORPUS / "botchan.txt"), str(tmp_path / "again"),
                                            vocab_size=1000, corpus_format="paragraphs")
    assert again.content_hash == load_tokenizer(f"{botchan_sp}.model").content_hash
    other = train_sentencepiece_from_corpus(str(CORPUS / "botchan.txt"), str(tmp_path / "other"),
                                            vocab_size=900, corpus_format="paragraphs")
    assert other.content_hash != again.content_hash
    assert np.array_equal(again.word_start_table[:5], [True] * 5)


def test_sentencepiece_model_without_bert_special_ids_is_refused(tmp_path):
    import sentencepiece as spm
    spm.SentencePieceTrainer.train(sentence_iterator=iter(["hello world", "a b c"] * 50),
                                   model_prefix=str(tmp_path / "plain"), vocab_size=15, minloglevel=2)
    with pytest.raises(DataError, match=r"\[PAD\] must have id 0"):
        load_tokenizer(str(tmp_path / "plain.model"))
