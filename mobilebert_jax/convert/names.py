"""HF tensor names <-> Flax parameter paths.

Our modules carry HF's names, so the mapping is mechanical: `layer.N` becomes
`layer_N`, torch Linear `weight` [out, in] becomes a Flax `kernel` [in, out],
embedding and norm weights become `embedding` and `scale`. One tensor differs
in kind: HF's `cls.predictions.dense.weight` is the untied [H - E, V] output
matrix, stored as-is under TF1's name `extra_output_weights`.
"""

from __future__ import annotations

_EMBEDDINGS = ("word_embeddings", "position_embeddings", "token_type_embeddings")
_NUMBERED = ("layer", "ffn")
_EXTRA = ("cls", "predictions", "dense", "weight")


def hf_to_flax(name: str) -> tuple[tuple[str, ...], bool]:
    """HF name -> (Flax path, whether the array must be transposed)."""
    parts, out, i = name.split("."), [], 0
    while i < len(parts):
        if parts[i] in _NUMBERED and i + 1 < len(parts) and parts[i + 1].isdigit():
            out.append(f"{parts[i]}_{parts[i + 1]}")
            i += 2
        else:
            out.append(parts[i])
            i += 1
    if tuple(out) == _EXTRA:
        return ("cls", "predictions", "extra_output_weights"), False
    if out[-1] != "weight":
        return tuple(out), False
    parent = out[-2] if len(out) > 1 else ""
    if parent in _EMBEDDINGS:
        return (*out[:-1], "embedding"), False
    if parent == "LayerNorm":
        return (*out[:-1], "scale"), False
    return (*out[:-1], "kernel"), True


def flax_to_hf(path: tuple[str, ...]) -> tuple[str, bool]:
    """Flax path -> (HF name, whether the array must be transposed)."""
    if tuple(path) == ("cls", "predictions", "extra_output_weights"):
        return ".".join(_EXTRA), False
    parts = []
    for p in path[:-1]:
        head, _, index = p.rpartition("_")
        parts.extend([head, index] if head in _NUMBERED and index.isdigit() else [p])
    leaf = path[-1]
    if leaf in ("embedding", "scale"):
        return ".".join([*parts, "weight"]), False
    if leaf == "kernel":
        return ".".join([*parts, "weight"]), True
    return ".".join([*parts, leaf]), False
