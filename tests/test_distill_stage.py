"""The distillation StageIO: the progressive schedule, the frozen teacher, copied parameters, strategies, layer maps.

Tiny models (hidden 64, 2-4 layers) on synthetic batches with padding; the
teacher is written to disk and read back as the trainer would.
"""

from __future__ import annotations

import dataclasses
import os
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import traverse_util

from mobilebert_jax import experiment_config, get_preset, model_source, optim, partitioning
from mobilebert_jax.errors import ConfigError
from mobilebert_jax.convert import native
from mobilebert_jax.distill import config as distill_config
from mobilebert_jax.distill import strategies
from mobilebert_jax.distill.objective import DistillationObjective
from mobilebert_jax.distill import stage as distill_stage
from mobilebert_jax.modeling import MobileBertForPreTraining
from mobilebert_jax.optim import multipliers
from mobilebert_jax.train import step as step_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEQ, PRED, BATCH = 16, 4, 4
# The paper's config.distill values (distill(strategy)); the library's reader holds none.
DISTILL_COMMON = experiment_config.load_module(os.path.join(REPO, "experiments", "distill_common.py"))


def distill_experiment(strategy: str, arg: str | None) -> ml_collections.ConfigDict:
    """experiments/distill_STRATEGY.py[:arg], unlocked for the tests to resize."""
    spec = os.path.join(REPO, "experiments", f"distill_{strategy}.py") + (f":{arg}" if arg else "")
    c = experiment_config.load_experiment(spec)
    c.unlock()
    return c


class PaddedBatches:
    """Deterministic MLM batches with padded tails; the state is the batch index."""

    def __init__(self, vocab: int, batch_size: int, seed: int = 0):
        self.vocab, self.batch_size, self.seed, self.index = vocab, batch_size, seed, 0

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        rng = np.random.default_rng([self.seed, self.index])
        self.index += 1
        b = self.batch_size
        lengths = rng.integers(SEQ // 2, SEQ + 1, b)
        mask = (np.arange(SEQ)[None] < lengths[:, None]).astype(np.int32)
        ids = rng.integers(5, self.vocab, (b, SEQ)).astype(np.int32) * mask
        positions = np.stack([np.sort(rng.choice(np.arange(1, n), PRED, replace=False)) for n in lengths])
        return {"input_ids": ids, "input_mask": mask,
                "segment_ids": (np.arange(SEQ)[None] >= lengths[:, None] // 2).astype(np.int32) * mask,
                "masked_lm_positions": positions.astype(np.int32),
                "masked_lm_ids": np.take_along_axis(ids, positions, 1),
                "masked_lm_weights": (np.arange(PRED)[None] < 3).astype(np.float32).repeat(b, 0),
                "next_sentence_labels": (lengths % 2).astype(np.int32)}

    def get_state(self) -> dict:
        return {"index": self.index}

    def set_state(self, state: dict) -> None:
        self.index = int(state["index"])


def tiny_models(layers: int = 2, teacher_layers: int | None = None):
    teacher = get_preset("ib_bert_test", num_hidden_layers=teacher_layers or layers, vocab_size=128)
    student = get_preset("mobilebert_test", num_hidden_layers=layers, vocab_size=128, num_feedforward_networks=2)
    return teacher, student


def save_teacher(path, teacher_cfg, seed: int = 1) -> str:
    model = MobileBertForPreTraining(teacher_cfg)
    params = model.init(jax.random.key(seed), jnp.zeros((1, SEQ), jnp.int32))["params"]
    # A trained teacher's features are not the init's: spread the weights a little.
    params = jax.tree.map(lambda x: x * 3.0, nn.unbox(params))
    native.save_params(str(path), teacher_cfg, params)
    return str(path)


def make_config(strategy: str, teacher_dir: str, teacher_cfg, student_cfg, phase_steps: int = 3,
                **distill) -> ml_collections.ConfigDict:
    c = distill_experiment(strategy, "smoke")
    c.teacher_model = ml_collections.ConfigDict(teacher_cfg.to_dict())
    c.model = ml_collections.ConfigDict(student_cfg.to_dict())
    c.distill.teacher = teacher_dir
    c.distill.student_init = ""
    c.distill.phase_steps = phase_steps
    for k, v in distill.items():
        c.distill[k] = v
    if strategy == "progressive":
        c.distill.last_phase = student_cfg.num_hidden_layers - 1
    else:
        c.total_steps = 10
    c.optimizer.groups = ml_collections.ConfigDict()
    c.optimizer.exclude = ()
    strategies.optimizer_settings(c, strategy, student_cfg.num_hidden_layers)
    c.data.max_seq_length = SEQ
    c.batch_size = BATCH
    c.eval.batch_size = BATCH
    c.eval.num_batches = 1
    c.checkpoint.async_save = False
    return c


def build(c, evaluate: bool = True):
    vocab = c.model.vocab_size
    held_out = (lambda: iter([next(PaddedBatches(vocab, c.eval.batch_size, 99))])) if evaluate else None
    return distill_stage.with_data(c, distill_stage.spec(c), lambda: (PaddedBatches(vocab, c.batch_size), held_out))


def init_state(task, c, tx):
    """As the trainer starts a fresh run on one device: init, load the teacher, initial params, optimizer state."""
    one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    params = nn.unbox(task.spec.init_params(jax.random.key(c.seed)))
    frozen_abstract = task.spec.frozen_abstract
    frozen = model_source.read(task.frozen_source, partitioning.with_shardings(
        frozen_abstract, jax.tree.map(lambda _: one, nn.unbox(frozen_abstract))))
    params = task.start_from(params, frozen, jax.tree.map(lambda _: one, params))
    return step_lib.TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params)), frozen


def at_step(state: step_lib.TrainState, step: int) -> step_lib.TrainState:
    """The state with its step and every optimizer step counter set to `step` (fresh moments)."""
    counts = jax.tree.map(lambda x: jnp.full_like(x, step) if x.dtype == jnp.int32 and x.ndim == 0 else x,
                          state.opt_state)
    return state.replace(step=jnp.asarray(step, jnp.int32), opt_state=counts)


def one_step(task, c, tx, state, frozen, batch):
    fn = step_lib.make_train_step(task.spec.objective, tx, step_metrics_fn=task.spec.step_metrics)
    return jax.jit(fn)(state, batch, frozen)


def flat(tree) -> dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in traverse_util.flatten_dict(jax.device_get(tree), sep="/").items()}


@pytest.fixture(scope="module")
def progressive(tmp_path_factory):
    teacher_cfg, student_cfg = tiny_models(layers=3)
    teacher_dir = save_teacher(tmp_path_factory.mktemp("teacher"), teacher_cfg)
    c = make_config("progressive", teacher_dir, teacher_cfg, student_cfg, phase_steps=10)
    task = build(c)
    tx = optim.build_optimizer(c.optimizer, jax.eval_shape(task.spec.init_params, jax.random.key(0)))
    state, frozen = init_state(task, c, tx)
    return c, task, tx, state, frozen


def test_progressive_step_inside_phase(progressive):
    """A step in the middle of phase 1 of 3: layer 0 below, layer 1 current, layer 2 above."""
    c, task, tx, state0, frozen = progressive
    phase, t = 1, 7
    step = phase * c.distill.phase_steps + t
    batch = next(PaddedBatches(c.model.vocab_size, BATCH, seed=step))
    before = flat(state0.params)
    state, metrics = one_step(task, c, tx, at_step(state0, step), frozen, batch)
    after = flat(state.params)

    # Only layer `phase`'s transfer loss is on; the distances of every layer run are logged (ungated), those of
    # the layer above (run by neither model) are 0.
    for i in range(3):
        assert (float(metrics[f"layer_{i}/loss"]) > 0) == (i == phase), i
        for k in ("feature_map", "mean", "variance", "attention"):
            assert (float(metrics[f"layer_{i}/{k}"]) > 0) == (i <= phase), (i, k)
    assert float(metrics["transfer_loss"]) == float(metrics[f"layer_{phase}/loss"])
    assert float(metrics["phase"]) == phase

    # Learning-rate multipliers: 3 bg(t) at the phase's layer, a tenth below, 0 above.
    frac = t / c.distill.phase_steps
    bg = min(0.9 + 0.1 * np.sqrt(1 - frac), 10 * frac)
    expected_mult = {i: 3 * bg * (1.0 if i == phase else 0.1 if i < phase else 0.0) for i in range(3)}
    for i in range(3):
        np.testing.assert_allclose(float(metrics[f"lr_multiplier/layer_{i}"]), expected_mult[i], rtol=1e-6)

    # The same step with every layer at multiplier 1 (same clip, same fresh moments): the deltas scale exactly.
    c_ref = ml_collections.ConfigDict(c.to_dict())
    c_ref.optimizer.groups = ml_collections.ConfigDict()
    tx_ref = optim.build_optimizer(c_ref.optimizer, jax.eval_shape(task.spec.init_params, jax.random.key(0)))
    ref_state = step_lib.TrainState(step=state0.step, params=state0.params, opt_state=tx_ref.init(state0.params))
    ref, _ = one_step(task, c_ref, tx_ref, at_step(ref_state, step), frozen, batch)
    ref_after = flat(ref.params)

    teacher = flat(frozen)
    copied = [re.compile(p) for p in strategies.COPIED_FROM_TEACHER]
    moved = set()
    for k in before:
        m = re.match(r"mobilebert/encoder/layer_(\d+)/", k)
        if any(p.search(k) for p in copied):
            np.testing.assert_array_equal(after[k], before[k], err_msg=k)  # frozen: bit for bit
            np.testing.assert_array_equal(after[k], teacher[k], err_msg=k)  # and the teacher's
        elif m and int(m.group(1)) > phase:
            np.testing.assert_array_equal(after[k], before[k], err_msg=k)  # above: untouched
        elif m:
            delta, ref_delta = after[k] - before[k], ref_after[k] - before[k]
            # Equal up to the rounding of `before + delta` (a few ulps of the parameter).
            np.testing.assert_allclose(delta, expected_mult[int(m.group(1))] * ref_delta, rtol=1e-3,
                                       atol=4 * np.spacing(np.abs(before[k]).max()), err_msg=k)
            if np.abs(delta).max() > 0:
                moved.add(int(m.group(1)))
    assert moved == {0, 1}


def test_lower_layers_frozen_option(progressive, tmp_path):
    c, task, tx, state0, frozen = progressive
    c = ml_collections.ConfigDict(c.to_dict())
    c.distill.lower_layer_multiplier = 0.0
    c.optimizer.groups = strategies.progressive_groups(3, c.distill.phase_steps, 0.0)
    tx0 = optim.build_optimizer(c.optimizer, jax.eval_shape(task.spec.init_params, jax.random.key(0)))
    state = step_lib.TrainState(step=state0.step, params=state0.params, opt_state=tx0.init(state0.params))
    step = 2 * c.distill.phase_steps + 3
    new, metrics = one_step(task, c, tx0, at_step(state, step), frozen, next(PaddedBatches(128, BATCH)))
    before, after = flat(state0.params), flat(new.params)
    for k in before:
        m = re.match(r"mobilebert/encoder/layer_(\d+)/", k)
        if m and int(m.group(1)) < 2:
            np.testing.assert_array_equal(after[k], before[k], err_msg=k)
    assert any(np.abs(after[k] - before[k]).max() > 0 for k in before if k.startswith("mobilebert/encoder/layer_2/"))


def test_teacher_has_no_optimizer_state_and_no_gradient(progressive):
    c, task, tx, state, frozen = progressive
    # The train state holds the student only: the same tree as a freshly initialized student.
    student_paths = set(flat(state.params))
    assert student_paths == set(traverse_util.flatten_dict(nn.unbox(task.spec.init_params(jax.random.key(0))), sep="/"))
    shapes = lambda tree: {tuple(v.shape) for v in flat(tree).values()}  # noqa: E731
    teacher_only = shapes(frozen) - shapes(state.params)
    assert teacher_only, "the test teacher must have parameter shapes the student lacks"
    opt_leaves = jax.tree_util.tree_flatten_with_path(state.opt_state)[0]
    arrays = [(jax.tree_util.keystr(p), x) for p, x in opt_leaves if hasattr(x, "shape") and x.ndim > 0]
    assert not [p for p, x in arrays if tuple(x.shape) in teacher_only]
    # The copied (frozen) student parameters hold no optimizer state either.
    for path, _ in arrays:
        assert "word_embeddings" not in path and "'cls'" not in path, path
    trained = sum(v.size for k, v in flat(state.params).items()
                  if not any(re.search(p, k) for p in strategies.COPIED_FROM_TEACHER))
    assert sum(x.size for _, x in arrays) == 2 * trained  # Adam's two moments, nothing else
    # The objective hands the teacher no gradient, even if one asked for it.
    objective = task.spec.objective
    batch = next(PaddedBatches(128, BATCH))
    totals = objective.totals(batch)

    def loss_wrt_teacher(teacher):
        context = step_lib.StepContext(step=jnp.asarray(c.distill.phase_steps + 1), frozen=teacher)
        return objective.loss(objective.sums(state.params, batch, jax.random.key(0), context, train=True), totals)

    assert float(loss_wrt_teacher(frozen)) > 0
    grads = jax.grad(loss_wrt_teacher)(frozen)
    assert all(not np.asarray(g).any() for g in jax.tree.leaves(grads))


def test_layer_loss_matches_numpy_with_reference_weights(progressive):
    """100 FMT + 5000 mean + 5 var + 1 AT for the current layer, from the models' own outputs, padding excluded."""
    c, task, tx, state, frozen = progressive
    batch = next(PaddedBatches(128, BATCH, seed=5))
    phase = 1
    context = step_lib.StepContext(step=jnp.asarray(phase * c.distill.phase_steps + 2), frozen=frozen)
    objective = task.spec.objective
    sums = objective.sums(state.params, batch, jax.random.key(0), context, train=True)
    loss = float(objective.loss(sums, objective.totals(batch)))

    teacher = MobileBertForPreTraining(get_preset("ib_bert_test", num_hidden_layers=3, vocab_size=128))
    student = MobileBertForPreTraining(get_preset("mobilebert_test", num_hidden_layers=3, vocab_size=128,
                                                  num_feedforward_networks=2))
    kw = dict(attention_mask=batch["input_mask"], token_type_ids=batch["segment_ids"], deterministic=True,
              output_hidden_states=True, output_attention_scores=True)
    t = teacher.apply({"params": frozen}, batch["input_ids"], **kw)
    s = student.apply({"params": state.params}, batch["input_ids"], **kw)
    hs, ht = (np.asarray(x[phase + 1], np.float64) for x in (s["hidden_states"], t["hidden_states"]))
    as_, at = (np.asarray(x[phase], np.float64) for x in (s["attention_scores"], t["attention_scores"]))
    m = batch["input_mask"].astype(bool)

    def ln(x):
        return (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-12)

    def log_softmax(x):
        x = x - x.max(-1, keepdims=True)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))

    fmt = np.mean(((ln(ht) - ln(hs)) ** 2)[m])
    mean = np.mean(((ht.mean(-1) - hs.mean(-1)) ** 2)[m])
    var = np.mean(np.abs(ht.var(-1) - hs.var(-1))[m])
    lt, ls = log_softmax(at), log_softmax(as_)
    kl = (np.exp(lt) * (lt - ls)).sum(-1).mean(1)  # [B, T]: mean over heads
    attention = np.mean(kl[m])
    # TF1's scaling (the default): the summed layer losses divided by the number of layers, 3.
    np.testing.assert_allclose(loss, (100 * fmt + 5000 * mean + 5 * var + attention) / 3, rtol=1e-4)
    # Logged besides the KL: TF1's attention cross-entropy, KL + the teacher's entropy.
    metrics = objective.summarize(sums)
    np.testing.assert_allclose(float(metrics[f"layer_{phase}/attention"]), attention, rtol=1e-4)
    ce = (-np.exp(lt) * ls).sum(-1).mean(1)
    np.testing.assert_allclose(float(metrics[f"layer_{phase}/attention_ce"]), np.mean(ce[m]), rtol=1e-4)
    np.testing.assert_allclose(float(metrics[f"layer_{phase}/loss"]), loss, rtol=1e-6)
    # The distances of the layers run are reported ungated; only the trained layer's enters the loss.
    for i in range(3):
        assert all((float(metrics[f"layer_{i}/{k}"]) > 0) == (i <= phase)
                   for k in ("feature_map", "variance", "attention"))
        assert (float(metrics[f"layer_{i}/loss"]) > 0) == (i == phase)
    # Evaluation (no dropout either way) runs every layer: the same distances, the same gated loss.
    evaluated = objective.summarize(objective.sums(state.params, batch, jax.random.key(0), context, train=False))
    for key in ("loss", "layer_0/feature_map", "layer_1/attention", f"layer_{phase}/loss"):
        np.testing.assert_allclose(float(evaluated[key]), float(metrics[key]), rtol=1e-5, err_msg=key)
    assert float(evaluated["layer_2/attention"]) > 0 == float(metrics["layer_2/attention"])


def _phase_limited_equals_full(c, phases, scan=False):
    """Training steps of `c` at the start of each of `phases`, each from the state the phase before left: the
    phase-limited step (both models through the phase's layer) against every layer run. Loss, gradients, every
    metric of the layers run and the trained student agree to float32 rounding."""
    if scan:
        c.model.scan_layers = c.teacher_model.scan_layers = True
    task = build(c, evaluate=False)
    tx = optim.build_optimizer(c.optimizer, jax.eval_shape(task.spec.init_params, jax.random.key(0)))
    state, frozen = init_state(task, c, tx)
    limited = task.spec.objective
    assert limited.stop_at_phase
    full = dataclasses.replace(limited, stop_at_phase=False)

    def grads_fn(objective):
        def fn(params, batch, step):
            context = step_lib.StepContext(step=step, frozen=frozen)
            return jax.grad(lambda p: objective.loss(objective.sums(p, batch, jax.random.key(3), context,
                                                                    train=True), objective.totals(batch)))(params)
        return jax.jit(fn)

    step_a, step_b = (jax.jit(step_lib.make_train_step(o, tx, step_metrics_fn=task.spec.step_metrics))
                      for o in (limited, full))
    grads_a, grads_b = grads_fn(limited), grads_fn(full)
    a = b = state
    n = c.distill.phase_steps
    for phase in phases:
        step = phase * n + 1  # past the phase's first step, whose rate is 0
        batch = next(PaddedBatches(c.model.vocab_size, BATCH, seed=step))
        ga, gb = grads_a(a.params, batch, jnp.asarray(step)), grads_b(a.params, batch, jnp.asarray(step))
        jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6), ga, gb)
        assert any(np.abs(np.asarray(g)).max() > 0 for g in jax.tree.leaves(ga))
        a, ma = step_a(at_step(a, step), batch, frozen)
        b, mb = step_b(at_step(b, step), batch, frozen)
        ran = [k for k in mb if not re.match(r"layer_(\d+)/", k) or int(k.split("/")[0][6:]) <= phase]
        for k in ran:
            np.testing.assert_allclose(float(ma[k]), float(mb[k]), rtol=1e-5, atol=1e-7, err_msg=(phase, k))
        assert float(ma[f"layer_{phase}/loss"]) > 0
        jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6), a.params, b.params)


# Each case compiles four programs (about 3 minutes on 2 loaded cores): the default suite keeps one.
@pytest.mark.parametrize("attention,scan", [(True, False), pytest.param(False, False, marks=pytest.mark.slow),
                                            pytest.param(True, True, marks=pytest.mark.slow)])
def test_phase_limited_progressive_step_equals_the_full_forward(progressive, attention, scan):
    c = ml_collections.ConfigDict(progressive[0].to_dict())
    if not attention:
        c.distill.weights.attention = 0.0
    _phase_limited_equals_full(c, phases=(0, 1, 2), scan=scan)


@pytest.mark.slow
def test_phase_limited_progressive_step_with_a_layer_map(tmp_path):
    """A 2-layer student of a 4-layer teacher, layer map [3, 1]: phase 0 runs the teacher through layer 3."""
    teacher_cfg, student_cfg = tiny_models(layers=2, teacher_layers=4)
    teacher_dir = save_teacher(tmp_path / "teacher", teacher_cfg)
    c = make_config("progressive", teacher_dir, teacher_cfg, student_cfg, phase_steps=10, layer_map=(3, 1))
    _phase_limited_equals_full(c, phases=(0, 1))


@pytest.mark.parametrize("strategy", ["joint", "auxiliary", "pd"])
def test_other_strategies_take_a_step(tmp_path, strategy):
    teacher_cfg, student_cfg = tiny_models(layers=2)
    teacher_dir = save_teacher(tmp_path / "teacher", teacher_cfg)
    c = make_config(strategy, teacher_dir, teacher_cfg, student_cfg)
    task = build(c)
    tx = optim.build_optimizer(c.optimizer, jax.eval_shape(task.spec.init_params, jax.random.key(0)))
    state, frozen = init_state(task, c, tx)
    # Step 3: past the learning-rate warm-up, whose first step has rate 0.
    new, metrics = one_step(task, c, tx, at_step(state, 3), frozen, next(PaddedBatches(128, BATCH)))
    layer_losses = [float(metrics[f"layer_{i}/loss"]) for i in range(2) if f"layer_{i}/loss" in metrics]
    if strategy == "pd":
        assert not layer_losses and float(metrics["pd_mlm_loss"]) > 0
    else:
        assert len(layer_losses) == 2 and all(v > 0 for v in layer_losses)  # every layer at once
    assert ("pd_mlm_loss" in metrics) == (strategy != "joint")
    before, after = flat(state.params), flat(new.params)
    embeddings = "mobilebert/embeddings/word_embeddings/embedding"
    # joint freezes the copied embeddings; auxiliary and PD train them.
    assert (np.array_equal(before[embeddings], after[embeddings])) == (strategy == "joint")
    np.testing.assert_array_equal(before[embeddings], flat(frozen)[embeddings])


def test_student_shallower_than_teacher_uses_the_layer_map(tmp_path):
    teacher_cfg, student_cfg = tiny_models(layers=2, teacher_layers=4)
    teacher_dir = save_teacher(tmp_path / "teacher", teacher_cfg)
    c = make_config("joint", teacher_dir, teacher_cfg, student_cfg, layer_map=(1, 3))
    task = build(c)
    assert "layer map [1, 3]" in task.describe
    c.distill.layer_map = ()
    assert "layer map [1, 3]" in build(c).describe  # the default spreads 2 over 4: layers 1 and 3
    c.distill.layer_map = (1, 4)
    with pytest.raises(ConfigError, match=re.escape("config.distill.layer_map[1]=4")):
        build(c)


def test_widths_and_heads_must_match(tmp_path):
    teacher_cfg, student_cfg = tiny_models(layers=2)
    teacher_dir = save_teacher(tmp_path / "teacher", teacher_cfg)
    c = make_config("joint", teacher_dir, teacher_cfg, student_cfg.replace(hidden_size=96))
    with pytest.raises(ConfigError, match="config.model.hidden_size=96 differs from config.teacher_model.hidden_size"):
        build(c)
    c = make_config("joint", teacher_dir, teacher_cfg, student_cfg.replace(num_attention_heads=2))
    with pytest.raises(ConfigError, match="config.model.num_attention_heads=2 differs"):
        build(c)
    c.distill.weights.attention = 0.0  # without attention transfer the head counts may differ
    build(c)


def test_progressive_needs_a_group_per_layer(progressive):
    c = ml_collections.ConfigDict(progressive[0].to_dict())
    del c.optimizer.groups["layer_2"]
    with pytest.raises(ConfigError, match="encoder layer 2 .* is in group 'default'"):
        build(c)


EMBEDDING_NORM = "mobilebert/embeddings/LayerNorm/"


def _run_steps(c, task, steps: int):
    """`steps` training steps from a fresh start; the final parameters."""
    tx = optim.build_optimizer(c.optimizer, jax.eval_shape(task.spec.init_params, jax.random.key(0)))
    state, frozen = init_state(task, c, tx)
    fn = jax.jit(step_lib.make_train_step(task.spec.objective, tx, step_metrics_fn=task.spec.step_metrics))
    batches = PaddedBatches(c.model.vocab_size, BATCH, seed=3)
    initial = flat(state.params)
    for _ in range(steps):
        state, _ = fn(state, next(batches), frozen)
    return initial, flat(state.params)


@pytest.fixture(scope="module")
def short_progressive(tmp_path_factory):
    teacher_cfg, student_cfg = tiny_models(layers=2)
    teacher_dir = save_teacher(tmp_path_factory.mktemp("teacher"), teacher_cfg)
    return lambda **distill: make_config("progressive", teacher_dir, teacher_cfg, student_cfg, phase_steps=3,
                                         **distill)


def test_embedding_norm_frozen_through_progressive_transfer_by_default(short_progressive):
    """TF1: the student's embedding norm keeps its initial value, bit for bit, through every phase."""
    c = short_progressive()
    assert c.distill.train_embedding_norm_in_transfer is False
    initial, final = _run_steps(c, build(c, evaluate=False), 6)  # both phases of 3 steps
    norm = [k for k in initial if k.startswith(EMBEDDING_NORM)]
    assert norm
    for k in norm:
        np.testing.assert_array_equal(final[k], initial[k], err_msg=k)
    for i in range(2):  # while every layer trained
        assert any(not np.array_equal(final[k], initial[k]) for k in initial
                   if k.startswith(f"mobilebert/encoder/layer_{i}/"))


def test_embedding_norm_trains_with_layer_0_when_asked(short_progressive):
    """train_embedding_norm_in_transfer=True is the earlier behaviour: the norm in layer 0's group, bit for bit."""
    c = short_progressive(train_embedding_norm_in_transfer=True)
    initial, final = _run_steps(c, build(c, evaluate=False), 6)
    norm = [k for k in initial if k.startswith(EMBEDDING_NORM)]
    assert any(not np.array_equal(final[k], initial[k]) for k in norm)
    # The earlier config: no group of its own, the norm matched by layer 0's pattern.
    old = ml_collections.ConfigDict(c.to_dict())
    del old.optimizer.groups["embedding_norm"]
    old.optimizer.groups.layer_0.pattern = "^(mobilebert/encoder/layer_0/|" + EMBEDDING_NORM + ")"
    _, old_final = _run_steps(old, build(c, evaluate=False), 6)
    for k in final:
        np.testing.assert_array_equal(final[k], old_final[k], err_msg=k)


@pytest.mark.parametrize("train", [False, True])
def test_embedding_norm_in_joint_transfer(tmp_path, train):
    teacher_cfg, student_cfg = tiny_models(layers=2)
    c = make_config("joint", save_teacher(tmp_path / "teacher", teacher_cfg), teacher_cfg, student_cfg,
                    train_embedding_norm_in_transfer=train)
    initial, final = _run_steps(c, build(c, evaluate=False), 3)  # past the warm-up's rate-0 first step
    changed = [not np.array_equal(final[k], initial[k]) for k in initial if k.startswith(EMBEDDING_NORM)]
    assert any(changed) == train


def test_embedding_norm_option_follows_command_line_overrides():
    """The groups refer to the field, so an override after the experiment file ran takes effect."""
    path = os.path.join(REPO, "experiments", "distill_progressive.py")
    for value, scale in (("false", 0.0), ("true", 3.0)):
        c = experiment_config.load_experiment(path, [f"--config.distill.train_embedding_norm_in_transfer={value}"])
        assert c.optimizer.groups.embedding_norm.multiplier.scale == scale
    c = experiment_config.load_experiment(os.path.join(REPO, "experiments", "distill_joint.py"),
                                          ["--config.distill.train_embedding_norm_in_transfer=true"])
    assert c.optimizer.groups.embedding_norm.multiplier == 1.0


def test_embedding_norm_option_must_agree_with_the_optimizer(short_progressive):
    c = short_progressive()
    c.optimizer.groups.embedding_norm.multiplier.scale = 3.0  # trains, though the field says frozen
    with pytest.raises(ConfigError, match="train_embedding_norm_in_transfer=False, but .*LayerNorm.* is trained by "
                                          "config.optimizer.groups.embedding_norm"):
        build(c)
    c = short_progressive(train_embedding_norm_in_transfer=True)
    c.optimizer.exclude = tuple(c.optimizer.exclude) + ("^" + EMBEDDING_NORM,)
    with pytest.raises(ConfigError, match="train_embedding_norm_in_transfer=True, but .* is frozen by "
                                          "config.optimizer.exclude"):
        build(c)


def test_paper_configs_default_to_tf1():
    for strategy in distill_config.STRATEGIES:
        for arg in (None, "smoke"):
            d = distill_experiment(strategy, arg).distill
            assert d.layer_loss_scaling == "tf1" and d.train_embedding_norm_in_transfer is False, (strategy, arg)


@pytest.mark.parametrize("scaling,factors", [("tf1", [1 / 3, 1 / 3, 1 / 3]), ("tf2", [1, 1 / 2, 1 / 3]),
                                             ("none", [1, 1, 1])])
def test_layer_loss_scaling(scaling, factors):
    """none / TF1's 1/L / TF2's 1/(l+1) on each layer's weighted loss, in the optimized and the logged loss."""
    d = distill_config.read(dict(DISTILL_COMMON.distill("joint").to_dict(), teacher="T",
                                 layer_loss_scaling=scaling))
    objective = DistillationObjective(distill=d, num_layers=3, layer_map=(0, 1, 2), student=None, teacher=None)
    sums = {"tokens": jnp.asarray(4.0)}
    expected_layers = []
    for i in range(3):
        values = {"feature_map": 0.1 * (i + 1), "mean": 1e-4, "variance": 0.5 + i, "attention": 2.0 + i}
        sums.update({f"layer_{i}/{k}": jnp.asarray(4.0 * v) for k, v in values.items()})
        sums[f"layer_{i}/attention_ce"] = jnp.asarray(4.0 * (values["attention"] + 1.0))
        sums[f"layer_{i}/loss"] = objective.layer_loss(i, {k: sums[f"layer_{i}/{k}"] for k in values})
        weighted = 100 * values["feature_map"] + 5000 * values["mean"] + 5 * values["variance"] + values["attention"]
        expected_layers.append(factors[i] * weighted)
    loss = objective.loss(sums, {"tokens": jnp.asarray(4.0)})
    np.testing.assert_allclose(float(loss), sum(expected_layers), rtol=1e-6)
    metrics = objective.summarize(sums)
    for i in range(3):
        np.testing.assert_allclose(float(metrics[f"layer_{i}/loss"]), expected_layers[i], rtol=1e-6)
        np.testing.assert_allclose(float(metrics[f"layer_{i}/attention_ce"]), 3.0 + i, rtol=1e-6)
    np.testing.assert_allclose(float(metrics["loss"]), float(loss), rtol=1e-6)


def test_layer_loss_scaling_is_checked():
    with pytest.raises(ConfigError, match=r"config.distill.layer_loss_scaling='tf3': choose one of"):
        distill_config.read(dict(DISTILL_COMMON.distill("progressive").to_dict(), teacher="T",
                                 layer_loss_scaling="tf3"))


@pytest.mark.parametrize("field", ["alpha", "phase_steps", "teacher_dtype", "weights.mlm", "weights.feature_map"])
def test_a_missing_distill_field_is_named(field):
    """The library's reader holds no values (they are experiments/distill_common.distill's)."""
    d = DISTILL_COMMON.distill("progressive").to_dict()
    section, _, name = field.rpartition(".")
    del (d[section] if section else d)[name]
    where = ".".join(filter(None, ("config.distill", section)))
    with pytest.raises(ConfigError, match=re.escape(f"{where} is missing required field(s) ['{name}']: set "
                                                    f"{where}.{name}")):
        distill_config.read(d)


def test_optional_distill_fields_left_out_mean_their_neutral_values():
    d = DISTILL_COMMON.distill("pd").to_dict()
    for field in ("student_init", "last_phase", "layer_map"):
        del d[field]
    read = distill_config.read(d)
    assert (read.student_init, read.last_phase, read.layer_map) == ("", None, ())


@pytest.mark.parametrize("compute_dtype,rtol", [("bfloat16", 2e-3), ("float32", 2e-2)])
def test_bfloat16_teacher_gives_the_float32_teachers_losses(tmp_path, compute_dtype, rtol):
    """config.distill.teacher_dtype=bfloat16 halves the frozen teacher's memory and gather traffic. At the full-size
    compute dtype (bfloat16) the teacher's matmuls round its parameters to bfloat16 anyway, so only the norms and
    output biases differ: every loss within 0.2%. With float32 compute every parameter is rounded: within 2%."""
    teacher_cfg, student_cfg = tiny_models(layers=2)
    teacher_cfg = teacher_cfg.replace(dtype=compute_dtype)
    teacher_dir = save_teacher(tmp_path / "teacher", teacher_cfg)
    metrics = {}
    for dtype in ("float32", "bfloat16"):
        c = make_config("auxiliary", teacher_dir, teacher_cfg, student_cfg, teacher_dtype=dtype)
        task = build(c)
        tx = optim.build_optimizer(c.optimizer, jax.eval_shape(task.spec.init_params, jax.random.key(0)))
        state, frozen = init_state(task, c, tx)
        assert {x.dtype for x in jax.tree.leaves(frozen)} == {jnp.dtype(dtype)}
        # The student's copies of the teacher's embeddings and heads stay float32 parameters.
        assert {x.dtype for x in jax.tree.leaves(state.params)} == {jnp.dtype("float32")}
        _, metrics[dtype] = one_step(task, c, tx, at_step(state, 3), frozen, next(PaddedBatches(128, BATCH)))
    compared = [k for k in metrics["float32"] if k.endswith("loss")]
    assert "pd_mlm_loss" in compared and "layer_1/loss" in compared
    for k in compared:
        np.testing.assert_allclose(float(metrics["bfloat16"][k]), float(metrics["float32"][k]), rtol=rtol, err_msg=k)


def test_teacher_dtype_is_checked(tmp_path):
    teacher_cfg, student_cfg = tiny_models(layers=2)
    c = make_config("pd", str(tmp_path), teacher_cfg, student_cfg, teacher_dtype="float16")
    with pytest.raises(ConfigError, match=r"config.distill.teacher_dtype='float16': choose one of"):
        build(c)


@pytest.mark.parametrize("strategy", ["progressive", "joint"])
def test_summary_lines_fit_a_terminal(strategy):
    """24 layers at the paper's scale: the line names the trained layer's distances, the worst layer, MLM and NSP."""
    from mobilebert_jax.metrics_writer import LINE_WIDTH, ProgressLine, eval_line

    d = distill_config.read(dict(DISTILL_COMMON.distill(strategy).to_dict(), teacher="T", phase_steps=10000))
    objective = DistillationObjective(distill=d, num_layers=24, layer_map=tuple(range(24)), student=None,
                                      teacher=None)
    metrics = {"loss": 0.0123456, "transfer_loss": 0.0123456, "mlm_accuracy": 0.1746, "mlm_loss": 5.40812,
               "nsp_accuracy": 0.6205, "nsp_loss": 0.6512}
    for i in range(24):
        metrics.update({f"layer_{i}/feature_map": 0.00812345 * (1 + (i == 3)), f"layer_{i}/mean": 1.234567e-05,
                        f"layer_{i}/variance": 0.9612345, f"layer_{i}/attention": 0.0551234,
                        f"layer_{i}/attention_ce": 1.2345, f"layer_{i}/loss": 0.0})
    step = 11 * 10000 + 5000  # in phase 11
    line = eval_line(step, metrics, objective.summary)
    assert len(line) <= LINE_WIDTH, (len(line), line)
    assert "worst layer 3: " in line and line.endswith("MLM acc 17.46% | NSP acc 62.05%")
    assert ("layer 11: fm 0.0081 mean 1.2e-05 var 0.96 att 0.055 |" in line) == (strategy == "progressive")
    clock = FakeClockForLines()
    progress = ProgressLine(total_steps=240000, tokens_per_step=2048 * 512, clock=clock, summary=objective.summary)
    progress.update(step - 100, metrics)
    clock.t += 31.0
    line = progress.update(step, {k: v for k, v in metrics.items() if not k.startswith(("mlm", "nsp"))})
    assert len(line) <= LINE_WIDTH and "ETA" in line and "loss 0.01235 | " in line, (len(line), line)


class FakeClockForLines:
    t = 0.0

    def __call__(self):
        return self.t
