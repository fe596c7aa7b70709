"""Training with layers under nn.scan: a progressive-distillation run across a phase boundary with a scanned
student and teacher equals the unrolled run; a scanned run resumes bit for bit (sharded over fsdp and
tensor); its checkpoint is read into either layout (an unrolled teacher, student or fine-tune).
"""

from __future__ import annotations

import shutil

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import synthetic_training
from test_distill_stage import BATCH, PaddedBatches, build, flat, init_state, make_config, save_teacher, tiny_models
from mobilebert_jax import model_source, optim, partitioning
from mobilebert_jax.modeling import MobileBertForPreTraining, stacking
from mobilebert_jax.finetune import stage as finetune_stage
from mobilebert_jax.train import step as step_lib
from mobilebert_jax.train.trainer import train

PHASE_STEPS, STEPS = 2, 3  # steps 0-1 train layer 0, step 2 layer 1 with layer 0 at a tenth


def _setup(c):
    task = build(c, evaluate=False)
    tx = optim.build_optimizer(c.optimizer, jax.eval_shape(task.spec.init_params, jax.random.key(0)))
    state, frozen = init_state(task, c, tx)
    step = jax.jit(step_lib.make_train_step(task.spec.objective, tx, step_metrics_fn=task.spec.step_metrics))
    return task, tx, state, frozen, step


def test_progressive_distillation_scanned_equals_unrolled(tmp_path):
    """Student and teacher scanned (the teacher read from an unrolled params directory into the stacked
    layout) against both unrolled, from the same parameters: every step's losses and multipliers, and the
    parameters and optimizer state after a phase boundary, within float32 rounding."""
    teacher_cfg, student_cfg = tiny_models(layers=2)
    teacher_dir = save_teacher(tmp_path / "teacher", teacher_cfg)
    c = make_config("progressive", teacher_dir, teacher_cfg, student_cfg, phase_steps=PHASE_STEPS)
    c_scan = make_config("progressive", teacher_dir, teacher_cfg.replace(scan_layers=True),
                         student_cfg.replace(scan_layers=True), phase_steps=PHASE_STEPS)
    _, _, state, frozen, step = _setup(c)
    _, tx_scan, state_scan, frozen_scan, step_scan = _setup(c_scan)
    assert stacking.is_stacked(frozen_scan) and stacking.is_stacked(state_scan.params)
    np.testing.assert_equal(flat(stacking.unstack(frozen_scan)), flat(frozen))
    # A scanned init draws other values than the unrolled one: start both from the same parameters.
    params = stacking.stack(state.params)
    state_scan = step_lib.TrainState(step=state.step, params=params, opt_state=tx_scan.init(params))

    start = flat(state.params)
    batches = PaddedBatches(c.model.vocab_size, BATCH, seed=5)
    for i in range(STEPS):
        batch = next(batches)
        state, metrics = step(state, batch, frozen)
        state_scan, metrics_scan = step_scan(state_scan, batch, frozen_scan)
        assert metrics.keys() == metrics_scan.keys()
        for k in metrics:
            np.testing.assert_allclose(float(metrics_scan[k]), float(metrics[k]), rtol=2e-5, atol=1e-7,
                                       err_msg=f"step {i} {k}")
    assert float(metrics["phase"]) == 1 and float(metrics["layer_1/loss"]) > 0
    got, want = flat(stacking.unstack(state_scan.params)), flat(state.params)
    assert got.keys() == want.keys()
    # Rounding differences relative to the steps' largest change (some tensors, such as the key bias, which the
    # softmax ignores, get updates of rounding noise alone).
    largest_change = max(float(np.abs(want[k] - start[k]).max()) for k in want)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-5 * largest_change, err_msg=k)
    assert jax.tree.structure(state_scan.opt_state) == jax.tree.structure(state.opt_state)
    for a, b in zip(jax.tree.leaves(state_scan.opt_state), jax.tree.leaves(state.opt_state)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6 * float(np.abs(b).max()))


TOTAL = 6


@pytest.fixture(scope="module")
def scanned_run(tmp_path_factory):
    """An uninterrupted in-process scanned run on a (1, 4, 2) mesh (conftest's 8 devices)."""
    workdir = str(tmp_path_factory.mktemp("scanned"))
    c = synthetic_training.config(total_steps=TOTAL, **{"model.scan_layers": True, "mesh.shape": (1, 4, 2)})
    train(c, workdir, synthetic_training.SYNTHETIC)
    return c, workdir, synthetic_training.final_params(workdir, c)


def test_scanned_run_resumes_bit_for_bit(tmp_path, scanned_run, capfd):
    c, straight_workdir, straight = scanned_run
    assert "mobilebert/encoder/layers/attention/self/query/kernel" in straight
    workdir = tmp_path / "run"
    shutil.copytree(straight_workdir, workdir)
    for later in range(4, TOTAL + 1, 2):  # as if stopped after the checkpoint of step 2
        shutil.rmtree(workdir / "checkpoints" / str(later))
    train(c, str(workdir), synthetic_training.SYNTHETIC)
    assert "resumed from step 2" in capfd.readouterr().out
    resumed = synthetic_training.final_params(str(workdir), c)
    assert resumed.keys() == straight.keys()
    for k in straight:
        np.testing.assert_array_equal(resumed[k], straight[k], err_msg=k)


def test_scanned_checkpoint_reads_into_either_layout(scanned_run):
    c, workdir, straight = scanned_run
    source = model_source.open_source(workdir, "config.distill.teacher")
    assert source.kind == "checkpoint" and source.config.scan_layers and stacking.is_stacked(source.shapes)
    stored = model_source.read(source)  # its own layout
    np.testing.assert_equal(flat(stored), straight)
    unrolled_cfg = source.config.replace(scan_layers=False)
    abstract = jax.eval_shape(lambda: MobileBertForPreTraining(unrolled_cfg).init(
        jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"])
    model_source.check_architecture(source, unrolled_cfg, model_source.flat_shapes(
        partitioning.unbox_without_constraints(abstract)), "config.distill.teacher", "config.teacher_model")
    one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = partitioning.with_shardings(abstract, jax.tree.map(
        lambda _: one, partitioning.unbox_without_constraints(abstract)))
    np.testing.assert_equal(flat(model_source.read(source, target)), flat(stacking.unstack(stored)))
    # A fine-tune of the unrolled model starts from the scanned run's backbone.
    ft = ml_collections.ConfigDict(dict(init_checkpoint=workdir, model=unrolled_cfg.to_dict()))
    backbone = finetune_stage.init_backbone(ft)
    assert "mobilebert/encoder/layer_1/attention/self/query/kernel" in backbone
    np.testing.assert_array_equal(backbone["mobilebert/encoder/layer_1/attention/self/query/kernel"],
                                  straight["mobilebert/encoder/layers/attention/self/query/kernel"][1])
