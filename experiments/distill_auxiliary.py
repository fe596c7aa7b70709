r"""Auxiliary knowledge transfer (REFERENCE section 4): every layer's transfer loss and pretraining distillation
summed in one stage of 740K steps (the transfer and PD budgets together); the student starts from the teacher's
embeddings and heads and trains everything. Warm-up over 10K steps to 1.5e-3, linear decay to 1.5e-7.

    python -m mobilebert_jax.main --config=experiments/distill_auxiliary.py --workdir=gs://BUCKET/runs/distill_auxiliary \
        --config.distill.teacher=gs://BUCKET/runs/teacher --config.data.corpus='gs://BUCKET/books_wiki/*.txt' \
        --config.data.prepared_dir=gs://BUCKET/data/books_wiki_512
    python -m mobilebert_jax.main --config=experiments/distill_auxiliary.py:smoke --workdir=runs/distill_auxiliary_smoke

Every field can be overridden (--config.distill.weights.attention=0, --config.distill.layer_map='(1, 3, 5)', ...);
the fields are described in mobilebert_jax/distill/config.py, the shared settings in distill_common.py. The
tokenizer is the one the teacher recorded unless --config.data.tokenizer names it (it must be the same).
"""

import os

from mobilebert_jax.experiment_config import load_module


def get_config(arg=None):
    return load_module(os.path.join(os.path.dirname(__file__), "distill_common.py")).get_config("auxiliary", arg)
