"""TFLite Metadata inside an exported `.tflite`, so app runtimes load it: MediaPipe Tasks' `TextClassifier` and
`TextEmbedder` (Android, iOS, web, Python) read the input tensors' roles, the tokenizer (its vocabulary packed
into the file as an associated file) and a classifier's label names from it. The LiteRT Task Library's
`BertNLClassifier` reads the same schema; it is not tested here (its Python package, tflite-support, needs
protobuf<4).

    tflite_bytes = app_metadata.text_classifier(tflite_bytes, tokenizer_file="vocab.txt", labels=["neg", "pos"])
    tflite_bytes = app_metadata.text_embedder(tflite_bytes, tokenizer_file="vocab.txt")  # output `embedding`

Written with MediaPipe's own metadata writer (`mediapipe.tasks.python.metadata.metadata_writers`, the `litert`
extra). One function of it is supplied here: the MediaPipe 1.x wheels ship the writer without the compiled
`_pywrap_metadata_version` extension it imports (the 0.10 wheels that have it need numpy<2 and protobuf<5,
which the rest of the project cannot use). `_minimum_parser_version` computes the same value -- the lowest
metadata-parser version that understands every field present -- from the schema's field history as MediaPipe's
`metadata_version.cc` lists it; the runtimes compare it with their own parser version on load.

Only batch-1 graphs get metadata: the runtimes tokenize and feed one text at a time. A span-QA export gets
none: the only runtime that reads it (LiteRT Task Library's `BertQuestionAnswerer`, tflite-support) needs
protobuf<4 and cannot be installed beside this project, so that metadata could not be tested.
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
import types
from typing import Iterator, Sequence

from mobilebert_jax.errors import ConfigError

# The graph's input tensors as the TFLite converter names them (signature `serving_default`, see tflite_export).
_TENSOR_NAMES = {"ids": "serving_default_input_ids:0", "mask": "serving_default_input_mask:0",
                 "segment": "serving_default_segment_ids:0"}

# (version, field) in the order the metadata schema gained them (MediaPipe's metadata_version.cc).
_VOCABULARY_FILE = (1, 0, 1)
_PROCESS_UNITS = (1, 1, 0)  # input/output process units; BERT and SentencePiece tokenizer options
_TENSOR_GROUPS = (1, 2, 0)
_REGEX_TOKENIZER = (1, 2, 1)
_AUDIO_PROPERTIES = (1, 3, 0)
_SCANN_INDEX_FILE = (1, 4, 0)
_FILE_VERSION = (1, 4, 1)
_CUSTOM_METADATA = (1, 5, 0)


def _minimum_parser_version(metadata_buffer: bytes) -> str:
    """The lowest metadata-parser version that reads every field of a `ModelMetadata` flatbuffer."""
    from mediapipe.tasks.metadata import metadata_schema_py_generated as fb

    metadata = fb.ModelMetadataT.InitFromObj(fb.ModelMetadata.GetRootAsModelMetadata(bytes(metadata_buffer), 0))
    needed = {(1, 0, 0)}

    file_types = {fb.AssociatedFileType.VOCABULARY: _VOCABULARY_FILE,
                  fb.AssociatedFileType.SCANN_INDEX_FILE: _SCANN_INDEX_FILE}
    unit_options = {fb.ProcessUnitOptions.BertTokenizerOptions: _PROCESS_UNITS,
                    fb.ProcessUnitOptions.SentencePieceTokenizerOptions: _PROCESS_UNITS,
                    fb.ProcessUnitOptions.RegexTokenizerOptions: _REGEX_TOKENIZER}

    def files(associated):
        for f in associated or []:
            needed.add(file_types.get(f.type, (1, 0, 0)))
            if f.version is not None:
                needed.add(_FILE_VERSION)

    def units(process_units):
        for unit in process_units or []:
            needed.add(unit_options.get(unit.optionsType, (1, 0, 0)))

    for subgraph in metadata.subgraphMetadata or []:
        for tensor in (subgraph.inputTensorMetadata or []) + (subgraph.outputTensorMetadata or []):
            files(tensor.associatedFiles)
            units(tensor.processUnits)
            if tensor.content is not None and (tensor.content.contentPropertiesType
                                               == fb.ContentProperties.AudioProperties):
                needed.add(_AUDIO_PROPERTIES)
        files(subgraph.associatedFiles)
        for process_units in (subgraph.inputProcessUnits, subgraph.outputProcessUnits):
            if process_units is not None:
                needed.add(_PROCESS_UNITS)
                units(process_units)
        if subgraph.inputTensorGroups is not None or subgraph.outputTensorGroups is not None:
            needed.add(_TENSOR_GROUPS)
        if subgraph.customMetadata is not None:
            needed.add(_CUSTOM_METADATA)
    files(metadata.associatedFiles)
    return ".".join(str(part) for part in max(needed))


def require() -> None:
    """A ConfigError naming the extra when MediaPipe is not installed."""
    try:
        import mediapipe  # noqa: F401
    except ImportError as e:
        raise ConfigError("app metadata (for MediaPipe's TextClassifier) needs the `litert` extra: "
                          "pip install 'mobilebert-jax[litert]', or export with --noapp_metadata") from e


def _writers():
    """MediaPipe's metadata_writer module, with the parser-version function its wheel lacks supplied."""
    name = "mediapipe.tasks.cc.metadata.python._pywrap_metadata_version"
    require()
    try:
        __import__(name)
    except ImportError:
        parents = name.split(".")
        for i in range(3, len(parents)):
            sys.modules.setdefault(".".join(parents[:i]), types.ModuleType(".".join(parents[:i])))
        module = types.ModuleType(name)
        module.GetMinimumMetadataParserVersion = _minimum_parser_version
        sys.modules[name] = module
    from mediapipe.tasks.python.metadata.metadata_writers import metadata_writer

    return metadata_writer


@contextlib.contextmanager
def _tokenizer(metadata_writer, tokenizer_file: str) -> Iterator:
    """The writer's tokenizer description of `tokenizer_file` (local or gs://). The writer reads a local file and
    packs it under its base name, so the bytes go to a scratch folder under that name, removed afterwards."""
    from mobilebert_jax import storage

    name = storage.path(tokenizer_file).name
    with tempfile.TemporaryDirectory(prefix="app-metadata-", dir=storage.scratch_dir()) as folder:
        local = storage.path(folder, name)
        local.write_bytes(storage.path(tokenizer_file).read_bytes())
        if name.endswith(".model"):
            yield metadata_writer.SentencePieceTokenizer(str(local))
        else:
            yield metadata_writer.BertTokenizer(str(local))


def text_classifier(tflite: bytes, *, tokenizer_file: str, labels: Sequence[str]) -> bytes:
    """`tflite` (a batch-1 sequence classifier with output `logits`) with TextClassifier metadata: BERT inputs
    tokenized by `tokenizer_file` (a WordPiece .txt or SentencePiece .model, local or gs://, packed into the file) and
    `labels` in output order. The scores an app reads are the logits (the graph has no softmax)."""
    metadata_writer = _writers()
    from mediapipe.tasks.python.metadata.metadata_writers import text_classifier as writer

    with _tokenizer(metadata_writer, tokenizer_file) as tokenizer:
        build = writer.MetadataWriter.create_for_bert_model(
            bytearray(tflite), tokenizer, metadata_writer.Labels().add(list(labels)), ids_name=_TENSOR_NAMES["ids"],
            mask_name=_TENSOR_NAMES["mask"], segment_name=_TENSOR_NAMES["segment"])
        populated, _ = build.populate()
    del build  # its temporary folder (the labels file) goes now, not at interpreter exit
    return bytes(populated)


def text_embedder(tflite: bytes, *, tokenizer_file: str) -> bytes:
    """`tflite` (a batch-1 graph whose one output is `embedding` [1, hidden]) with TextEmbedder metadata: BERT
    inputs tokenized by `tokenizer_file`, the output a feature vector."""
    metadata_writer = _writers()

    writer = metadata_writer.MetadataWriter(bytearray(tflite))
    writer.add_general_info("TextEmbedder", "The pooled [CLS] vector of the input text.")
    with _tokenizer(metadata_writer, tokenizer_file) as tokenizer:
        writer.add_bert_text_input(tokenizer, _TENSOR_NAMES["ids"], _TENSOR_NAMES["mask"], _TENSOR_NAMES["segment"])
        writer.add_feature_output(name="embedding", description="The pooled [CLS] vector.")
        populated, _ = writer.populate()
    del writer
    return bytes(populated)
