r"""Architecture search over the MobileBERT student's MHA/FFN parameter ratio (paper section 4.1): the paper found
that, at a fixed budget, the ratio of attention to feed-forward parameters matters and that stacking FFNs
(MobileBERT has 4 per layer) restores it after the bottleneck shrinks the FFNs. Each run distills one student
shape with pretraining distillation (PD) from the IB-BERT teacher, all else as in experiments/distill_pd.py.

    python -m mobilebert_jax.tools.sweep experiments/sweeps/mha_ffn_ratio.py launch --root=gs://BUCKET/sweeps \
        --slice_prefix=mbsearch --tpu_run_args="--zone=europe-west4-a --accelerator=v3-32 --spot"
    python -m mobilebert_jax.tools.sweep experiments/sweeps/mha_ffn_ratio.py summary --root=gs://BUCKET/sweeps

Set the teacher with MOBILEBERT_TEACHER (a trainer workdir, checkpoint or params directory). Each run is 20K
PD steps at the paper's batch (2048 x 512), this project's choice for a search, not a number from the paper;
compare the runs by their masked-LM accuracy. The ratio column counts per layer: attention = the
key/query bottleneck, Q, K, V and output projections; FFN = every stacked FFN's two matrices.
"""

import os

SEARCH_STEPS = 20_000
HIDDEN, INTRA = 512, 128
# (stacked FFNs, FFN inner width): the FFN share grows down the list; (4, 512) is MobileBERT.
SHAPES = [(1, 512), (2, 512), (1, 1536), (4, 512), (2, 1536), (6, 512)]


def mha_ffn_ratio(ffns: int, intermediate: int) -> float:
    attention = HIDDEN * INTRA + 2 * INTRA * INTRA + HIDDEN * INTRA + INTRA * INTRA
    return attention / (ffns * 2 * INTRA * intermediate)


def get_sweep():
    return dict(
        config="experiments/distill_pd.py",
        fixed={"distill.teacher": os.environ.get("MOBILEBERT_TEACHER", ""), "total_steps": SEARCH_STEPS,
               "optimizer.schedule.warmup_steps": SEARCH_STEPS // 50},
        axes=[{"ffns": [f for f, _ in SHAPES], "intermediate": [i for _, i in SHAPES],
               "mha_ffn_ratio": [round(mha_ffn_ratio(f, i), 3) for f, i in SHAPES]}],
        derive=lambda s: {"model.num_feedforward_networks": s["ffns"], "model.intermediate_size": s["intermediate"]},
        metrics=["mlm_accuracy", "loss", "eval/mlm_accuracy"],
    )
