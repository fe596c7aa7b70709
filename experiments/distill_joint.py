r"""Joint knowledge transfer (REFERENCE section 4): every layer's transfer loss at once for the 240K transfer steps,
embeddings and heads copied from the teacher and frozen, the student's embedding norm too (TF1's rule for
layer-wise transfer; --config.distill.train_embedding_norm_in_transfer=true trains it); then PD (experiments/distill_pd.py with
--config.distill.student_init=THIS_WORKDIR). The learning rate warms up over 10K steps to 1.5e-3 and decays linearly to
1.5e-7 (the PD recipe; REFERENCE gives none for this stage).

    python -m mobilebert_jax.main --config=experiments/distill_joint.py --workdir=gs://BUCKET/runs/distill_joint \
        --config.distill.teacher=gs://BUCKET/runs/teacher --config.data.corpus='gs://BUCKET/books_wiki/*.txt' \
        --config.data.prepared_dir=gs://BUCKET/data/books_wiki_512
    python -m mobilebert_jax.main --config=experiments/distill_joint.py:smoke --workdir=runs/distill_joint_smoke

Every field can be overridden (--config.distill.weights.attention=0, --config.distill.layer_map='(1, 3, 5)', ...);
the fields are described in mobilebert_jax/distill/config.py, the shared settings in distill_common.py. The
tokenizer is the one the teacher recorded unless --config.data.tokenizer names it (it must be the same).
"""

import os

from mobilebert_jax.experiment_config import load_module


def get_config(arg=None):
    return load_module(os.path.join(os.path.dirname(__file__), "distill_common.py")).get_config("joint", arg)
