"""The 24-phase progressive schedule under the real trainer: a run stopped in the middle of a phase
and started again ends bit for bit where an uninterrupted run ends.

A 24-layer student (so 24 phases, 2 steps each) learns from a 2-layer teacher through the default
layer map; both runs stop after phase 7 via `last_phase`, the way one phase at a time is run. The
runs happen in a subprocess with one CPU device (compiling 24 layers for the 8 fake test devices
would take minutes), sharing a persistent compilation cache so only the first run compiles.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from limits import HANG_S

LAYERS, TEACHER_LAYERS, PHASE_STEPS, LAST_PHASE = 24, 2, 2, 7


def _final_params(workdir, student_cfg) -> dict[str, np.ndarray]:
    import jax
    import jax.numpy as jnp
    from flax import traverse_util

    from mobilebert_jax import partitioning
    from mobilebert_jax import model_source
    from mobilebert_jax.modeling import MobileBertForPreTraining
    from test_distill_stage import SEQ

    one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    model = MobileBertForPreTraining(student_cfg)
    shapes = partitioning.unbox_without_constraints(
        jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, SEQ), jnp.int32))["params"]))
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=one), shapes)
    params = model_source.read(model_source.open_source(str(workdir), "final"), abstract)
    return {k: np.asarray(v) for k, v in traverse_util.flatten_dict(jax.device_get(params), sep="/").items()}


def run_three(root: str) -> None:
    """Subprocess body: straight run, stopped run, resumed run; saves the parameters to compare."""
    import flax.linen as nn
    import jax
    from flax import traverse_util

    jax.config.update("jax_compilation_cache_dir", os.path.join(root, "xla_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    from mobilebert_jax.train.trainer import train
    from test_distill_stage import build, make_config, save_teacher, tiny_models

    teacher_cfg, student_cfg = tiny_models(layers=LAYERS, teacher_layers=TEACHER_LAYERS)
    student_cfg = student_cfg.replace(num_feedforward_networks=1)
    c = make_config("progressive", save_teacher(os.path.join(root, "teacher"), teacher_cfg), teacher_cfg,
                    student_cfg, phase_steps=PHASE_STEPS)
    c.distill.last_phase = LAST_PHASE
    c.checkpoint.every_steps = 4
    # The batches are synthetic ids of the tiny vocabulary: a WordPiece vocabulary of that size is the run's tokenizer
    # (the default one's 4,000 ids would not fit the model, and the test teacher records none).
    vocab = os.path.join(root, "vocab.txt")
    with open(vocab, "w") as f:
        specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        f.write("\n".join(specials + [f"w{i}" for i in range(teacher_cfg.vocab_size - len(specials))]) + "\n")
    c.data.tokenizer = vocab
    assert c.total_steps == (LAST_PHASE + 1) * PHASE_STEPS
    builder = lambda config, workdir: build(config, evaluate=False)  # noqa: E731

    metrics = train(c, os.path.join(root, "straight"), builder)
    assert metrics["phase"] == LAST_PHASE, metrics.get("phase")
    stopped = c.copy_and_resolve_references()
    stopped.total_steps = 5 * PHASE_STEPS + 1  # one step into phase 5
    train(stopped, os.path.join(root, "resumed"), builder)
    train(c, os.path.join(root, "resumed"), builder)  # the same command again

    init = traverse_util.flatten_dict(jax.device_get(nn.unbox(build(c).spec.init_params(jax.random.key(c.seed)))), sep="/")
    np.savez(os.path.join(root, "init.npz"), **{k: np.asarray(v) for k, v in init.items()})
    for name in ("straight", "resumed"):
        np.savez(os.path.join(root, f"{name}.npz"), **_final_params(os.path.join(root, name), student_cfg))


@pytest.mark.slow  # 399 s on 2 idle cores (871 s loaded); `python -m pytest -q -m slow tests/test_distill_resume.py`
def test_resume_in_the_middle_of_a_phase_is_exact(tmp_path):
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    proc = subprocess.run([sys.executable, __file__, str(tmp_path)], env=env, capture_output=True, text=True,
                          timeout=HANG_S)
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-5000:]
    assert "resumed from step 11" in proc.stdout, proc.stdout[-3000:]
    straight, resumed, init = (dict(np.load(tmp_path / f"{n}.npz")) for n in ("straight", "resumed", "init"))
    assert straight.keys() == resumed.keys() == init.keys()
    for k in straight:
        np.testing.assert_array_equal(resumed[k], straight[k], err_msg=k)
    # The schedule really ran: layers up to the last phase moved, the ones above kept their initialization.
    for k, v in straight.items():
        if k.startswith("mobilebert/encoder/layer_"):
            layer = int(k.split("/")[2].split("_")[1])
            if layer > LAST_PHASE:
                np.testing.assert_allclose(v, init[k], rtol=1e-6, atol=1e-7, err_msg=k)
            elif k.endswith("kernel"):
                assert not np.allclose(v, init[k]), k


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    run_three(sys.argv[1])
