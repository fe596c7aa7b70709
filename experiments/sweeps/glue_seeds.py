r"""One fine-tuning recipe over five seeds, reported as mean ± standard deviation (REFERENCE section 7: CoLA,
MRPC and RTE move by about 3 points between seeds, so a single run says little).

    MOBILEBERT_INIT_CHECKPOINT=runs/mobilebert_params \
        python -m mobilebert_jax.tools.sweep experiments/sweeps/glue_seeds.py run --root=runs/sweeps
    python -m mobilebert_jax.tools.sweep experiments/sweeps/glue_seeds.py summary --root=runs/sweeps

`summary` prints every run, then a table of mean ± sample standard deviation over the finished seeds.
Another task: set GLUE_TASK (cola, mrpc, rte, ...). Add `,smoke` to the config argument for a CPU-sized run.
"""

import os

TASK = os.environ.get("GLUE_TASK", "rte")


def get_sweep():
    return dict(
        config=f"experiments/finetune_glue.py:task={TASK}",
        fixed={"init_checkpoint": os.environ.get("MOBILEBERT_INIT_CHECKPOINT", "")},
        axes=[{"seed": [0, 1, 2, 3, 4]}],
        metrics=("eval/accuracy", "eval/loss"),
    )
