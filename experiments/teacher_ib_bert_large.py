r"""Pretrain the IB-BERT_LARGE teacher from scratch with MLM + NSP (REFERENCE sections 1, 4, 5).

Paper scale (256 TPU v3 cores, global batch 4096 x 512, LAMB). First prepare BookCorpus + English Wikipedia (BERT's
text layout: one sentence per line, a blank line between documents) once on Dataflow into the prepared_dir that
this stage and every distillation stage reuse (docs/data.md, "Apache Beam"):

    python -m mobilebert_jax.data.prepare --runner=DataflowRunner --project=PROJECT --region=us-central1 \
        --temp_location=gs://BUCKET/tmp --num_workers=64 --setup_file=./setup.py \
        --requirements_file=launch/dataflow_requirements.txt --config=experiments/teacher_ib_bert_large.py \
        --config.data.corpus='gs://BUCKET/books_wiki/*.txt' --config.data.tokenizer=gs://BUCKET/bert-uncased-vocab.txt \
        --config.data.prepared_dir=gs://BUCKET/data/books_wiki_512

    python -m mobilebert_jax.main --config=experiments/teacher_ib_bert_large.py \
        --workdir=gs://BUCKET/runs/teacher --config.data.corpus='gs://BUCKET/books_wiki/*.txt' \
        --config.data.prepared_dir=gs://BUCKET/data/books_wiki_512 \
        --config.data.tokenizer=gs://BUCKET/bert-uncased-vocab.txt
    (on a pod: launch/tpu_run.sh starts this on every host)

Smoke (2 CPU cores, about 6 minutes, the embedded Python-docs corpus, no download):

    python -m mobilebert_jax.main --config=experiments/teacher_ib_bert_large.py:smoke --workdir=runs/teacher_smoke

What to expect from the smoke run: a 4-layer IB-BERT (inverted bottleneck 128 -> 256, 2.3M parameters, sequences
of 64) learns in 1200 steps: held-out masked-LM accuracy rises from about 5% (the most frequent piece) to about
19% (measured: 16.2% at step 800 and 18.8% at step 1200, held-out NSP 63%; 10 CPU-minutes, so about
5-6 minutes on two free cores); checkpoints, TensorBoard events and metrics.jsonl land in the workdir.
Rerun the same command to resume.

The smoke run uses AdamW (bias-corrected), not the paper's LAMB: at this size and length LAMB stays on the
unigram plateau longer than the run lasts (measured: held-out MLM accuracy 5.4% after 400 steps at batch 32,
sequences of 64, lr 5e-3 and also at 1e-2), while AdamW at 1e-3 leaves it within a few hundred steps.

Step count: REFERENCE gives the teacher's batch (4096), optimizer (LAMB) and hardware, not its length;
500K steps at the PD stage's learning-rate recipe (warm up 10K steps to 1.5e-3, linear decay to 1.5e-7)
is this project's default, not a number from the paper.

Pooler: the model follows TF1 (the `ib_bert_large` preset): its NSP head reads tanh(W h[CLS] + b), as TF1's
BertConfig defaults classifier_activation to true and the teacher's TF1 config omits it. The TF2 Model Garden's
yaml turns it off (the NSP head reads h[CLS] itself): `--config.model.classifier_activation=False`. The smoke
run keeps the TF2 choice: its figures above and the README job's table (experiments/pipeline.py starts from it)
were measured without the pooler.

Any field can be overridden on the command line, e.g. --config.total_steps=1000 --config.mesh.shape='(16,16,1)'.
"""

from __future__ import annotations

import os

import ml_collections

from mobilebert_jax.config import get_preset
from mobilebert_jax.experiment_config import load_module

common = load_module(os.path.join(os.path.dirname(__file__), "common.py"))


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    smoke = common.parse_arg(arg, "teacher_ib_bert_large.py", smoke=False).smoke
    c = ml_collections.ConfigDict()
    c.stage = "teacher_pretraining"
    # No rematerialization: on v3:8x16 the step needs 9.1 GiB of 16 per core without it, and remat costs 33%
    # more FLOPs (docs/scale_out.md). Turn it on (--config.model.remat=True) for smaller slices.
    model = get_preset("ib_bert_large", dtype="bfloat16", remat=False)
    c.seed = 0
    c.batch_size = 4096  # global, in sequences
    c.microbatches = 1
    c.total_steps = ml_collections.FieldReference(500_000)  # the schedule's length follows an override
    c.log_every = 100

    c.data = common.pretraining_data(max_seq_length=512, max_predictions_per_seq=20)

    c.optimizer = common.optimizer("lamb", lr=1.5e-3)
    c.optimizer.schedule.kind = "warmup_linear_decay"
    c.optimizer.schedule.warmup_steps = 10_000
    c.optimizer.schedule.total_steps = c.get_ref("total_steps")
    c.optimizer.schedule.end_lr = 1.5e-7

    if not smoke:
        # Fully sharded (fsdp over every core): each core keeps 1/N of the parameters and LAMB moments instead of
        # all of them, for the same FLOPs (docs/scale_out.md).
        # 5,120 held-out sequences in batches of 1,024, which the 512 devices of a v3-256 or of two v5e-256 slices
        # divide (tools.preflight checks it).
        common.trainer_sections(c, mesh=common.FSDP, checkpoint_every=5_000, keep_last=3, every_steps=10_000,
                                batch_size=1024, num_batches=5)
    else:
        common.trainer_sections(c, mesh=common.DATA_PARALLEL, checkpoint_every=400, keep_last=3, every_steps=400,
                                batch_size=64, num_batches=2)
        # Dropout only slows learning when a run sees ~1M tokens once.
        model = get_preset("ib_bert_large", vocab_size=4000, hidden_size=128, intra_bottleneck_size=256,
                           intermediate_size=512, embedding_size=64, num_hidden_layers=4, num_attention_heads=4,
                           max_position_embeddings=128, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                           classifier_activation=False)  # see the docstring's "Pooler"
        c.batch_size = 32
        c.total_steps = 1200
        c.log_every = 50
        common.embedded_corpus(c.data)
        c.data.max_seq_length = 64
        c.data.max_predictions_per_seq = 10
        # See the docstring: at this scale LAMB stays on the unigram plateau for longer than the run.
        c.optimizer = common.optimizer("adamw", lr=1e-3)
        c.optimizer.bias_correction = True
        c.optimizer.schedule.kind = "warmup_linear_decay"
        c.optimizer.schedule.warmup_steps = 60
        c.optimizer.schedule.total_steps = c.get_ref("total_steps")
        c.optimizer.schedule.end_lr = 0.0
    c.model = ml_collections.ConfigDict(model.to_dict())
    return c
