r"""Pretraining distillation (REFERENCE sections 3 and 4): the phase after progressive or joint transfer. Masked-LM
cross-entropy against alpha * onehot + (1 - alpha) * softmax(teacher logits / tau) (alpha 0.5, tau 1) plus NSP; 500K steps,
warm-up 10K steps to 1.5e-3, linear decay to 1.5e-7; every parameter trains.

    python -m mobilebert_jax.main --config=experiments/distill_pd.py --workdir=gs://BUCKET/runs/distill_pd \
        --config.distill.teacher=gs://BUCKET/runs/teacher \
        --config.distill.student_init=gs://BUCKET/runs/distill_progressive --config.data.corpus=tfds:wikipedia/20230601.en:train

student_init is a workdir (its latest checkpoint), a checkpoint step directory or a params directory; with
--config.distill.student_init="" the student starts fresh from the teacher's embeddings and heads (PD alone, no transfer).
Hard labels only (no distillation term): --config.distill.alpha=1. The tokenizer is the one the teacher recorded
unless --config.data.tokenizer names it (it must be the same).

Smoke (after the progressive smoke run):

    python -m mobilebert_jax.main --config=experiments/distill_pd.py:smoke --workdir=runs/distill_pd_smoke

Every field can be overridden (--config.distill.weights.attention=0, --config.distill.layer_map='(1, 3, 5)', ...);
the fields are described in mobilebert_jax/distill/config.py, the shared settings in distill_common.py.
"""

import os

from mobilebert_jax.experiment_config import load_module


def get_config(arg=None):
    return load_module(os.path.join(os.path.dirname(__file__), "distill_common.py")).get_config("pd", arg)
