"""Parameters and FLOPs per token of every preset, and a forward pass of each model asked for.

    python -m mobilebert_jax.model_summary                  # table + forward of MobileBERT and IB-BERT
    python -m mobilebert_jax.model_summary --markdown       # the README's table
    python -m mobilebert_jax.model_summary --forward=mobilebert_tiny --seq_len=128
"""

from __future__ import annotations

import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from mobilebert_jax import flops
from mobilebert_jax.config import PAPER_PRESETS, get_preset
from mobilebert_jax.modeling import MobileBertForPreTraining

FLAGS = flags.FLAGS
flags.DEFINE_list("presets", list(PAPER_PRESETS), "presets to list in the table")
flags.DEFINE_list("forward", ["mobilebert", "ib_bert_large"], "presets to run a forward pass of")
flags.DEFINE_integer("seq_len", 128, "sequence length for FLOPs and the forward pass")
flags.DEFINE_integer("batch_size", 2, "batch size of the forward pass")
flags.DEFINE_bool("markdown", False, "print the table as Markdown")


def summary_rows(presets: Sequence[str], seq_len: int) -> list[dict]:
    rows = []
    for name in presets:
        c = get_preset(name)
        per_token = flops.encoder_flops_per_token(c, seq_len)
        rows.append(dict(preset=name, layers=c.num_hidden_layers, hidden=c.hidden_size, intra=c.true_hidden_size,
                         params=flops.parameter_count(c), flops_per_token=per_token,
                         gflops_per_sequence=per_token * seq_len / 1e9))
    return rows


def format_table(rows: list[dict], seq_len: int, markdown: bool) -> str:
    header = ["preset", "layers", "hidden", "intra", "backbone params", f"FLOPs/token (seq {seq_len})",
              f"GFLOPs/sequence"]
    lines = [[r["preset"], str(r["layers"]), str(r["hidden"]), str(r["intra"]), f"{r['params']:,}",
              f"{r['flops_per_token'] / 1e6:.1f}M", f"{r['gflops_per_sequence']:.2f}"] for r in rows]
    if markdown:
        out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        out += ["| " + " | ".join(line) + " |" for line in lines]
        return "\n".join(out)
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]
    fmt = lambda cells: "  ".join(c.rjust(w) for c, w in zip(cells, widths))  # noqa: E731
    return "\n".join([fmt(header)] + [fmt(line) for line in lines])


def forward_once(name: str, batch_size: int, seq_len: int) -> str:
    c = get_preset(name)
    model = MobileBertForPreTraining(c)
    rng = np.random.default_rng(0)
    ids = jnp.asarray(rng.integers(1, c.vocab_size, (batch_size, seq_len)), jnp.int32)
    mask = jnp.ones_like(ids)
    params = jax.jit(model.init)(jax.random.key(0), ids)["params"]
    forward = jax.jit(lambda p, i, m: model.apply({"params": p}, i, attention_mask=m))
    out = jax.block_until_ready(forward(params, ids, mask))  # compile
    start = time.perf_counter()
    out = jax.block_until_ready(forward(params, ids, mask))
    seconds = time.perf_counter() - start
    return (f"{name}: mlm_logits {tuple(out['mlm_logits'].shape)}, nsp_logits {tuple(out['nsp_logits'].shape)}, "
            f"{batch_size * seq_len / seconds:,.0f} tokens/s forward on {jax.devices()[0].device_kind}")


def main(argv):
    del argv
    print(format_table(summary_rows(FLAGS.presets, FLAGS.seq_len), FLAGS.seq_len, FLAGS.markdown))
    for name in FLAGS.forward:
        print(forward_once(name, FLAGS.batch_size, FLAGS.seq_len), flush=True)


if __name__ == "__main__":
    from mobilebert_jax import cli

    cli.run_absl(main)
