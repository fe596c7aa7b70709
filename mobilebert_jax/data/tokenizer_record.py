"""The tokenizer a model was trained with, recorded next to the model so that it travels with it.

Every trainer workdir and params directory holds `tokenizer/tokenizer.json`
(what it is, its content hash, its vocabulary size, the spec it was loaded
from) and a copy of its vocab.txt or SentencePiece .model. A stage started
from that model tokenizes with the copy unless told otherwise, and refuses a
different tokenizer (`choose`). An HF directory's `vocab.txt` counts as its
record.
"""

from __future__ import annotations

import json
from typing import Optional

from etils import epath

from mobilebert_jax.errors import ConfigError
from mobilebert_jax.data.tokenizers import SentencePieceTokenizer, Tokenizer, WordPieceTokenizer, load_tokenizer

DIRNAME = "tokenizer"
RECORD = "tokenizer.json"


def file_of(tokenizer: Tokenizer) -> epath.Path:
    """The vocab.txt or .model file the tokenizer was read from."""
    if tokenizer.spec.startswith("builtin:"):
        from mobilebert_jax.data.builtin_tokenizer import builtin_tokenizer_path
        return epath.Path(builtin_tokenizer_path(tokenizer.spec))
    return epath.Path(tokenizer.spec)


def record_of(tokenizer: Tokenizer) -> dict:
    kind = "sentencepiece" if isinstance(tokenizer, SentencePieceTokenizer) else "wordpiece"
    return dict(kind=kind, content_hash=tokenizer.content_hash, vocab_size=tokenizer.vocab_size,
                spec=tokenizer.spec, file=file_of(tokenizer).name)


def save(tokenizer: Tokenizer, model_dir: str) -> dict:
    """Writes `model_dir/tokenizer/` (the record and a copy of the vocabulary file); returns the record."""
    out = epath.Path(model_dir) / DIRNAME
    out.mkdir(parents=True, exist_ok=True)
    record = record_of(tokenizer)
    (out / record["file"]).write_bytes(file_of(tokenizer).read_bytes())
    (out / RECORD).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return record


def read(model_dir: epath.Path) -> Optional[dict]:
    path = epath.Path(model_dir) / DIRNAME / RECORD
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
        if not all(k in record for k in ("kind", "content_hash", "vocab_size", "file")):
            raise ValueError(f"expected the fields kind, content_hash, vocab_size, file; got {sorted(record)}")
    except ValueError as e:
        raise ConfigError(f"{path}: not a tokenizer record: {e}") from None
    return record


def from_hf_dir(path: epath.Path) -> Optional[dict]:
    """An HF directory's WordPiece vocabulary as a record (None without a vocab.txt)."""
    vocab = epath.Path(path) / "vocab.txt"
    if not vocab.exists():
        return None
    return record_of(WordPieceTokenizer(str(vocab)))


def choose(spec: str, spec_field: str, record: Optional[dict], record_dir: Optional[str], source_field: str,
           model_vocab: int, vocab_field: str) -> str:
    """The tokenizer spec a stage uses: `spec` if given, else the source model's recorded copy.

    Refused before anything compiles: no tokenizer at all, a `spec` that is not
    the tokenizer the source model was trained with, or a tokenizer with more
    ids than the model has embeddings (JAX would clamp them silently).
    """
    recorded = str(epath.Path(record_dir) / record["file"]) if record else None
    if not spec:
        if recorded is None:
            raise ConfigError(f"{spec_field} is empty and {source_field} records no tokenizer; pass "
                              f"--{spec_field}=PATH (a vocab.txt or SentencePiece .model)")
        spec = recorded
    tokenizer = load_tokenizer(spec)
    if record and tokenizer.content_hash != record["content_hash"]:
        raise ConfigError(f"{spec_field}={spec!r} ({_describe(record_of(tokenizer))}) is not the tokenizer "
                          f"{source_field} was trained with ({_describe(record)}, copy at {recorded}); leave "
                          f"{spec_field} empty to use that one")
    if tokenizer.vocab_size > model_vocab:
        raise ConfigError(f"{spec_field}={spec!r} has {tokenizer.vocab_size} tokens but {vocab_field}="
                          f"{model_vocab}: its ids would exceed the model's vocabulary")
    return spec


def record_run(config, workdir: str) -> None:
    """Copies a run's tokenizer (`config.data.tokenizer`) into `workdir/tokenizer/` (process 0)."""
    import jax

    spec = config.data.get("tokenizer") if "data" in config else None
    if spec and jax.process_index() == 0:
        save(load_tokenizer(spec), workdir)


def run_tokenizer(workdir: str, config) -> Optional[str]:
    """The tokenizer spec of a finished run: its own recorded copy, else its config's (runs made before records)."""
    record = read(epath.Path(workdir))
    if record is not None:
        return str(epath.Path(workdir) / DIRNAME / record["file"])
    return config.data.get("tokenizer") if "data" in config else None


def _describe(record: dict) -> str:
    return f"{record['kind']}, {record['vocab_size']} tokens, hash {record['content_hash']}"


def copy(record: Optional[dict], record_dir: Optional[str], model_dir: str) -> None:
    """Copies a source's tokenizer (record + file) into `model_dir/tokenizer/`; nothing when it has none."""
    if record is None:
        return
    out = epath.Path(model_dir) / DIRNAME
    out.mkdir(parents=True, exist_ok=True)
    (out / record["file"]).write_bytes((epath.Path(record_dir) / record["file"]).read_bytes())
    (out / RECORD).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")


def write_hf_files(record: Optional[dict], record_dir: Optional[str], hf_dir: str, max_length: int) -> list[str]:
    """The files `transformers.AutoTokenizer` reads, for the recorded tokenizer; returns their names.

    WordPiece: HF's own MobileBertTokenizer files (vocab.txt, lowercasing as ours).
    SentencePiece: a fast-tokenizer `tokenizer.json` (Unigram with our BERT special tokens and
    `[CLS] A [SEP] B [SEP]` templates), loaded as PreTrainedTokenizerFast.
    """
    if record is None:
        return []
    out = epath.Path(hf_dir)
    special = dict(unk_token="[UNK]", sep_token="[SEP]", pad_token="[PAD]", cls_token="[CLS]", mask_token="[MASK]")
    # BERT's inputs, segment ids included (a bare fast tokenizer would leave token_type_ids out).
    inputs = dict(model_input_names=["input_ids", "token_type_ids", "attention_mask"])
    source = epath.Path(record_dir) / record["file"]
    if record["kind"] == "wordpiece":
        (out / "vocab.txt").write_bytes(source.read_bytes())
        config = dict(tokenizer_class="MobileBertTokenizer", do_lower_case=True, model_max_length=max_length,
                      **special, **inputs)
        written = ["vocab.txt"]
    else:
        _write_sentencepiece_json(source, out / "tokenizer.json")
        config = dict(tokenizer_class="PreTrainedTokenizerFast", model_max_length=max_length, **special, **inputs)
        written = ["tokenizer.json"]
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2, sort_keys=True) + "\n")
    return written + ["tokenizer_config.json", "special_tokens_map.json"]


def _write_sentencepiece_json(model_file: epath.Path, out: epath.Path) -> None:
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2
    from tokenizers import Regex
    from tokenizers import Tokenizer as FastTokenizer
    from tokenizers import decoders, models, normalizers, pre_tokenizers, processors

    proto = model_file.read_bytes()
    sp = spm.SentencePieceProcessor(model_proto=proto)
    spec = sentencepiece_model_pb2.ModelProto.FromString(proto)
    vocab = [(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())]
    fast = FastTokenizer(models.Unigram(vocab, unk_id=sp.unk_id(), byte_fallback=False))
    # SentencePiece's own normalization (its compiled rules, then the extra whitespace it removes), as
    # transformers' SpmConverter does it.
    steps = [normalizers.Strip(left=True, right=True), normalizers.Replace(Regex(" {2,}"), " ")]
    if spec.normalizer_spec.precompiled_charsmap:
        steps.insert(0, normalizers.Precompiled(spec.normalizer_spec.precompiled_charsmap))
    fast.normalizer = normalizers.Sequence(steps)
    fast.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    fast.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    ids = {t: sp.piece_to_id(t) for t in ("[CLS]", "[SEP]")}
    fast.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=list(ids.items()))
    fast.add_special_tokens(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    out.write_text(fast.to_str())
