r"""The paper's GLUE fine-tuning search (REFERENCE section 6) for one task: batch {16, 32, 48} x learning rate
(1-10)e-5 x 2-10 epochs, sampled as 3 x 5 x 4 = 60 runs.

    MOBILEBERT_INIT_CHECKPOINT=runs/mobilebert_params \
        python -m mobilebert_jax.tools.sweep experiments/sweeps/glue_mrpc.py run --root=runs/sweeps
    python -m mobilebert_jax.tools.sweep experiments/sweeps/glue_mrpc.py summary --root=runs/sweeps

MOBILEBERT_INIT_CHECKPOINT names the distilled MobileBERT to fine-tune (a params directory or an HF
checkpoint, see experiments/finetune_glue.py); without it the runs train from scratch. Another task: copy
this file and change TASK (the small ones, CoLA/MRPC/RTE, vary by about 3 points between seeds; add a
{"seed": [...]} axis to see it).
"""

import math
import os

from mobilebert_jax.experiment_config import load_module

TASK = "mrpc"
BASE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "finetune_glue.py")


def get_sweep():
    examples = load_module(BASE).TRAIN_SIZES[TASK]

    def derive(s):
        steps = math.ceil(s["epochs"] * examples / s["batch_size"])
        return {"batch_size": s["batch_size"], "optimizer.lr": s["lr"], "total_steps": steps,
                "optimizer.schedule.total_steps": steps}

    return dict(
        config=f"experiments/finetune_glue.py:task={TASK}",
        fixed={"init_checkpoint": os.environ.get("MOBILEBERT_INIT_CHECKPOINT", "")},
        axes=[{"batch_size": [16, 32, 48]}, {"lr": [1e-5, 2e-5, 4e-5, 7e-5, 1e-4]}, {"epochs": [2, 3, 5, 10]}],
        derive=derive,
        metrics=["eval/accuracy", "eval/loss", "loss"],
    )
