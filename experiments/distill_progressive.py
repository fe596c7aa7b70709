r"""Progressive knowledge transfer (REFERENCE section 4): 24 phases of 10K steps; phase l trains layer l on its
transfer loss only, TF1's learning-rate multipliers (3 * bg(t) at layer l, a tenth of that below, 0 above), embeddings and
heads copied from the teacher and frozen. Then run experiments/distill_pd.py with --config.distill.student_init=THIS_WORKDIR.

Paper scale (batch 2048 x 512, LAMB 1.5e-3, 240K steps):

    python -m mobilebert_jax.main --config=experiments/distill_progressive.py \
        --workdir=gs://BUCKET/runs/distill_progressive --config.distill.teacher=gs://BUCKET/runs/teacher \
        --config.data.corpus=tfds:wikipedia/20230601.en:train

(the tokenizer is the one the teacher recorded unless --config.data.tokenizer names it; it must be the same).

One phase at a time (each command continues the same workdir and stops at the end of phase l, 0-based):

    python -m mobilebert_jax.main --config=experiments/distill_progressive.py \
        --workdir=gs://BUCKET/runs/distill_progressive --config.distill.teacher=gs://BUCKET/runs/teacher \
        --config.data.corpus=tfds:wikipedia/20230601.en:train --config.distill.last_phase=0

Lower layers frozen instead of at a tenth of the rate: --config.distill.lower_layer_multiplier=0.
TF1's defaults (REFERENCE: the student's embedding norm frozen until PD, each layer loss divided by the 24 layers);
the alternatives: --config.distill.train_embedding_norm_in_transfer=true, --config.distill.layer_loss_scaling=tf2|none.

Smoke (after the teacher smoke run, which writes runs/teacher_smoke):

    python -m mobilebert_jax.main --config=experiments/distill_progressive.py:smoke --workdir=runs/distill_progressive_smoke

Every field can be overridden (--config.distill.weights.attention=0, --config.distill.layer_map='(1, 3, 5)', ...);
the fields are described in mobilebert_jax/distill/config.py, the shared settings in distill_common.py.
"""

import os

from mobilebert_jax.experiment_config import load_module


def get_config(arg=None):
    return load_module(os.path.join(os.path.dirname(__file__), "distill_common.py")).get_config("progressive", arg)
