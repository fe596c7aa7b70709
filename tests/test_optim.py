"""The optimizer against an independent NumPy transcription of REFERENCE section 5, plus groups and masks."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mobilebert_jax import ConfigError, optim
from synthetic_training import COMMON

B1, B2, EPS, WD = 0.9, 0.999, 1e-6, 0.01

# name -> (shape, is norm-or-bias): kernels, biases, norm scales/offsets, an embedding table.
LEAVES = {
    "params/embeddings/word_embeddings/embedding": ((6, 4), False),
    "params/embeddings/LayerNorm/scale": ((4,), True),
    "params/embeddings/LayerNorm/bias": ((4,), True),
    "params/encoder/layer_0/attention/query/kernel": ((4, 3), False),
    "params/encoder/layer_0/attention/query/bias": ((3,), True),
    "params/encoder/layer_0/output/NoNorm_0/scale": ((3,), True),
    "params/encoder/layer_1/ffn/kernel": ((3, 5), False),
    "params/encoder/layer_1/ffn/bias": ((5,), True),
    "params/cls/zero_init/kernel": ((2, 2), False),  # ||w|| = 0 -> trust ratio 1
}


def nest(flat: dict) -> dict:
    out: dict = {}
    for path, value in flat.items():
        node = out
        *parents, last = path.split("/")
        for k in parents:
            node = node.setdefault(k, {})
        node[last] = value
    return out


def flatten(tree) -> dict:
    return {optim.path_of(kp): np.asarray(v) for kp, v in jax.tree_util.tree_leaves_with_path(tree)}


def make_params(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    flat = {}
    for path, (shape, _) in LEAVES.items():
        flat[path] = np.zeros(shape, np.float32) if "zero_init" in path else rng.normal(size=shape).astype(np.float32)
    return flat


def make_grads(steps: int, seed: int = 1) -> list[dict]:
    rng = np.random.default_rng(seed)
    # Scaled up so that global-norm clipping at 1.0 is active on every step.
    return [{p: (5 * rng.normal(size=s)).astype(np.float32) for p, (s, _) in LEAVES.items()} for _ in range(steps)]


def numpy_lamb(params: dict, grads: list[dict], lrs: list[float], bias_correction: bool, lamb: bool = True) -> dict:
    """REFERENCE section 5, in float64, one tensor at a time."""
    w = {p: v.astype(np.float64) for p, v in params.items()}
    m = {p: np.zeros_like(v) for p, v in w.items()}
    v2 = {p: np.zeros_like(v) for p, v in w.items()}
    for t, (g, lr) in enumerate(zip(grads, lrs), start=1):
        g = {p: x.astype(np.float64) for p, x in g.items()}
        gnorm = np.sqrt(sum(np.sum(x * x) for x in g.values()))
        g = {p: x * min(1.0, 1.0 / gnorm) for p, x in g.items()}
        for p in w:
            exempt = LEAVES[p][1]
            m[p] = B1 * m[p] + (1 - B1) * g[p]
            v2[p] = B2 * v2[p] + (1 - B2) * g[p] ** 2
            mh, vh = (m[p] / (1 - B1 ** t), v2[p] / (1 - B2 ** t)) if bias_correction else (m[p], v2[p])
            u = mh / (np.sqrt(vh) + EPS)
            if not exempt:
                u = u + WD * w[p]
            r = 1.0
            wn, un = np.linalg.norm(w[p]), np.linalg.norm(u)
            if lamb and not exempt and wn > 0 and un > 0:
                r = wn / un
            w[p] = w[p] - lr * r * u
    return w


def run(tx: optax.GradientTransformation, params: dict, grads: list[dict]) -> dict:
    p = nest({k: jnp.asarray(v) for k, v in params.items()})
    state = tx.init(p)

    @jax.jit
    def step(p, state, g):
        updates, state = tx.update(g, state, p)
        return optax.apply_updates(p, updates), state

    for g in grads:
        p, state = step(p, state, nest({k: jnp.asarray(v) for k, v in g.items()}))
    return flatten(p)


def lamb_cfg(**changes):
    cfg = COMMON.optimizer("lamb", lr=2e-2)
    cfg.schedule = dict(kind="warmup_linear_decay", warmup_steps=2, total_steps=6, end_lr=1e-3)
    for k, v in changes.items():  # assignment replaces; ConfigDict.update would merge nested dicts
        cfg[k] = v
    return cfg


def reference_lrs(steps: int, peak=2e-2, warmup=2, total=6, end=1e-3) -> list[float]:
    return [peak * s / warmup if s < warmup else (peak - end) * (1 - (s - warmup) / (total - warmup)) + end
            for s in range(steps)]


@pytest.mark.parametrize("bias_correction", [False, True])
def test_lamb_matches_numpy_reference(bias_correction):
    params, grads = make_params(), make_grads(7)
    tx = optim.build_optimizer(lamb_cfg(bias_correction=bias_correction), nest(params))
    got = run(tx, params, grads)
    want = numpy_lamb(params, grads, reference_lrs(7), bias_correction)
    for p in LEAVES:
        np.testing.assert_allclose(got[p], want[p], rtol=2e-5, atol=1e-6, err_msg=p)
    # The test must be able to fail: the other bias-correction setting gives different weights.
    other = numpy_lamb(params, grads, reference_lrs(7), not bias_correction)
    assert not np.allclose(got["params/encoder/layer_1/ffn/kernel"], other["params/encoder/layer_1/ffn/kernel"],
                           rtol=1e-4)


def test_adamw_matches_numpy_reference():
    cfg = lamb_cfg(name="adamw")
    params, grads = make_params(), make_grads(5)
    got = run(optim.build_optimizer(cfg, nest(params)), params, grads)
    want = numpy_lamb(params, grads, reference_lrs(5), bias_correction=False, lamb=False)
    for p in LEAVES:
        np.testing.assert_allclose(got[p], want[p], rtol=2e-5, atol=1e-6, err_msg=p)


def test_norm_or_bias_rule():
    for path, (_, exempt) in LEAVES.items():
        assert optim.is_norm_or_bias(tuple(path.split("/"))) == exempt, path
    assert optim.is_norm_or_bias(("params", "layer_norm", "weird_name"))
    assert not optim.is_norm_or_bias(("params", "dense", "kernel"))
    assert not optim.is_norm_or_bias(())


def test_no_decay_and_no_trust_ratio_for_exempt_leaves():
    # With a zero gradient, LAMB's update is lr * r * wd * w for decayed leaves and 0 for exempt ones.
    params = make_params()
    cfg = lamb_cfg(schedule=dict(kind="constant"), lr=0.1)
    tx = optim.build_optimizer(cfg, nest(params))
    p = nest({k: jnp.asarray(v) for k, v in params.items()})
    updates, _ = tx.update(jax.tree.map(jnp.zeros_like, p), tx.init(p), p)
    for path, u in flatten(updates).items():
        w = params[path]
        if LEAVES[path][1] or not np.any(w):
            np.testing.assert_array_equal(u, 0.0, err_msg=path)
        else:  # r = ||w|| / ||wd w|| = 1 / wd, so the step is exactly -lr * w
            np.testing.assert_allclose(u, -0.1 * w, rtol=1e-5, err_msg=path)


def test_step_dependent_multipliers_scale_updates():
    params = make_params()
    p = nest({k: jnp.asarray(v) for k, v in params.items()})
    cfg = lamb_cfg(groups=dict(
        layer_0=dict(pattern=r"encoder/layer_0/", multiplier=dict(kind="progressive", layer=0, phase_steps=4)),
        layer_1=dict(pattern=r"encoder/layer_1/", multiplier=dict(kind="progressive", layer=1, phase_steps=4)),
        half=dict(pattern=r"^params/embeddings/", multiplier=0.5),
    ))
    grouped, plain = optim.build_optimizer(cfg, p), optim.build_optimizer(lamb_cfg(), p)
    s_grouped, s_plain = grouped.init(p), plain.init(p)
    mult = {0: optim.progressive(0, 4), 1: optim.progressive(1, 4)}
    seen_nonzero = set()
    for step, g in enumerate(make_grads(10)):
        g = nest({k: jnp.asarray(v) for k, v in g.items()})
        u_g, s_grouped = grouped.update(g, s_grouped, p)
        u_p, s_plain = plain.update(g, s_plain, p)
        u_g, u_p = flatten(u_g), flatten(u_p)
        for path in LEAVES:
            if "layer_0" in path or "layer_1" in path:
                factor = float(mult[int(path.split("layer_")[1][0])](jnp.int32(step)))
                seen_nonzero.add(factor != 0)
            elif path.startswith("params/embeddings/"):
                factor = 0.5
            else:
                factor = 1.0
            np.testing.assert_allclose(u_g[path], factor * u_p[path], rtol=1e-6, atol=1e-12,
                                       err_msg=f"step {step} {path}")
    assert seen_nonzero == {True, False}


def test_progressive_multiplier_formula():
    P = 10
    f = {k: optim.progressive(k, P) for k in range(3)}
    for step in range(35):
        phase, t = divmod(step, P)
        bg = min(0.9 + 0.1 * np.sqrt(1 - t / P), 10 * t / P)
        for k in range(3):
            which = 0.0 if k > phase else (1.0 if k == phase else 0.1)
            np.testing.assert_allclose(float(f[k](jnp.int32(step))), 3 * bg * which, rtol=1e-6, atol=1e-9)


def _state_paths(state) -> list[str]:
    return [jax.tree_util.keystr(kp) for kp, _ in jax.tree_util.tree_leaves_with_path(state)]


def test_frozen_and_excluded_params_hold_no_state_and_do_not_move():
    params = make_params()
    params["teacher/encoder/kernel"] = np.ones((3, 3), np.float32)
    p = nest({k: jnp.asarray(v) for k, v in params.items()})
    cfg = lamb_cfg(groups=dict(frozen=dict(pattern=r"^params/embeddings/", multiplier=0.0)),
                   exclude=(r"^teacher/",))
    tx = optim.build_optimizer(cfg, p)
    state = tx.init(p)
    state_paths = _state_paths(state)
    assert any("['encoder']" in s for s in state_paths)
    assert not any("['embeddings']" in s or "['teacher']" in s for s in state_paths), state_paths
    # Array memory: exactly two moments for every trainable leaf, plus int32 counts.
    trainable = sum(np.prod(s) for path, (s, _) in LEAVES.items() if "embeddings" not in path)
    assert sum(x.size for x in jax.tree.leaves(state) if x.ndim) == 2 * trainable

    grads = make_grads(3)
    for g in grads:
        g["teacher/encoder/kernel"] = np.full((3, 3), 1e6, np.float32)
    got = run(tx, params, grads)
    for path in params:
        if "embeddings" in path or path.startswith("teacher"):
            np.testing.assert_array_equal(got[path], params[path], err_msg=path)
    # The excluded teacher gradient (1e6) is outside the clip norm: the trainable leaves
    # move exactly as with no teacher at all.
    no_teacher = {k: v for k, v in params.items() if not k.startswith("teacher")}
    cfg_nt = lamb_cfg(groups=dict(frozen=dict(pattern=r"^params/embeddings/", multiplier=0.0)))
    want = run(optim.build_optimizer(cfg_nt, nest(no_teacher)), no_teacher,
               [{k: v for k, v in g.items() if not k.startswith("teacher")} for g in grads])
    np.testing.assert_array_equal(got["params/encoder/layer_1/ffn/kernel"], want["params/encoder/layer_1/ffn/kernel"])


def test_reset_state_when_zero_restarts_moments():
    params = make_params()
    p = nest({k: jnp.asarray(v) for k, v in params.items()})
    switch_on = lambda step: jnp.where(step >= 2, 1.0, 0.0)  # noqa: E731
    cfg = lamb_cfg(groups=dict(l1=dict(pattern="layer_1/", multiplier=switch_on, reset_state_when_zero=True)))
    tx = optim.build_optimizer(cfg, p)
    state = tx.init(p)
    grads = make_grads(3)
    for g in grads:
        g = nest({k: jnp.asarray(v) for k, v in g.items()})
        _, state = tx.update(g, state, p)
    mus = {jax.tree_util.keystr(kp): x for kp, x in jax.tree_util.tree_leaves_with_path(state)
           if ".mu" in jax.tree_util.keystr(kp) and "['ffn']['kernel']" in jax.tree_util.keystr(kp)}
    (mu,) = mus.values()
    # Steps 0 and 1 were gated, so the moment saw only the clipped step-2 gradient.
    g2 = grads[2]
    gnorm = np.sqrt(sum(np.sum(x.astype(np.float64) ** 2) for x in g2.values()))
    np.testing.assert_allclose(mu, (1 - B1) * g2["params/encoder/layer_1/ffn/kernel"] / gnorm, rtol=1e-5)


def test_init_on_boxed_abstract_params_keeps_boxes():
    import flax.linen as nn

    class Toy(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(3, kernel_init=nn.with_logical_partitioning(nn.initializers.ones_init(), ("hidden", "mlp")),
                            bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("mlp",)))(x)

    boxed = jax.eval_shape(Toy().init, jax.random.key(0), jnp.ones((1, 2)))
    cfg = lamb_cfg(groups=dict(frozen=dict(pattern="bias", multiplier=0.0)))
    tx = optim.build_optimizer(cfg, boxed)
    state = jax.eval_shape(tx.init, boxed)
    boxes = [x for x in jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, nn.Partitioned))
             if isinstance(x, nn.Partitioned)]
    assert boxes and all(b.names == ("hidden", "mlp") for b in boxes)  # m and v of the kernel only


def test_schedules():
    def lr_at(schedule, steps):
        cfg = dict(COMMON.optimizer("lamb", lr=1.0).to_dict(), schedule=schedule)
        return [float(optim.build_schedule(cfg)(s)) for s in steps]

    assert lr_at(dict(kind="constant"), [0, 100]) == [1.0, 1.0]
    np.testing.assert_allclose(lr_at(dict(kind="warmup_constant", warmup_steps=4), [0, 2, 4, 50]), [0, .5, 1, 1])
    np.testing.assert_allclose(
        lr_at(dict(kind="warmup_linear_decay", warmup_steps=2, total_steps=12, end_lr=0.1), [0, 1, 2, 7, 12, 20]),
        [0, .5, 1, .55, .1, .1], rtol=1e-6)
    np.testing.assert_allclose(  # TF1: decay measured from step 0, warmup overrides the start
        lr_at(dict(kind="warmup_linear_decay", warmup_steps=2, total_steps=10, decay_origin="step_zero"), [1, 2, 5]),
        [.5, .8, .5], rtol=1e-6)
    np.testing.assert_allclose(
        lr_at(dict(kind="warmup_polynomial_decay", warmup_steps=0, total_steps=4, power=2.0), [0, 2, 4]),
        [1, .25, 0], atol=1e-7)
    np.testing.assert_allclose(  # fine-tuning's "10% warmup"
        lr_at(dict(kind="warmup_linear_decay", warmup_fraction=0.1, total_steps=100), [5, 10, 55]), [.5, 1, .5])


@pytest.mark.parametrize("changes, message", [
    (dict(name="sgd"), "config.optimizer.name='sgd'"),
    (dict(weight_decy=0.1), "unknown field(s) ['weight_decy']"),
    (dict(b2=1.0), "config.optimizer.b2=1.0"),
    (dict(lr=-1.0), "config.optimizer.lr=-1.0"),
    (dict(schedule=dict(kind="cosine")), "config.optimizer.schedule.kind='cosine'"),
    (dict(schedule=dict(kind="warmup_linear_decay", warmup_steps=5)), "config.optimizer.schedule.total_steps is required"),
    (dict(schedule=dict(kind="warmup_linear_decay", warmup_steps=5, total_steps=5)), "must exceed the warmup"),
    (dict(schedule=dict(kind="warmup_linear_decay", total_steps=5, power=2.0)), "schedule.power=2.0 applies to"),
    (dict(schedule=dict(kind="constant", warmup_steps=3)), "warmup_steps=3 does not apply"),
    (dict(schedule=dict(kind="warmup_constant", warmup_steps=3, warmup_fraction=0.1, total_steps=9)), "not both"),
    (dict(groups=dict(l9=dict(pattern="layer_9/"))), "config.optimizer.groups.l9.pattern='layer_9/' matches no"),
    (dict(groups=dict(bad=dict(pattern="("))), "config.optimizer.groups.bad.pattern='(' is not a valid regex"),
    (dict(groups=dict(l0=dict(pattern="layer_0", multiplier=-1.0))), "groups.l0.multiplier=-1.0"),
    (dict(groups=dict(l0=dict(pattern="layer_0", multiplier=dict(kind="linear")))), "groups.l0.multiplier.kind"),
    (dict(groups=dict(l0=dict(pattern="layer_0", multiplier=dict(kind="progressive", layer=0)))),
     "groups.l0.multiplier: bad fields for rule 'progressive'"),
    (dict(groups=dict(l0=dict(pattern="layer_0", multiplier=2.0, reset_state_when_zero=True))),
     "reset_state_when_zero needs a step-dependent multiplier"),
    (dict(groups=dict(l0=dict(pattern="layer_0", lr=2.0))), "groups.l0 has unknown field(s) ['lr']"),
    (dict(groups=dict(default=dict(pattern="layer_0"))), "groups.default: the group name 'default' is reserved"),
    (dict(exclude=("^teacher/",)), "config.optimizer.exclude[0]='^teacher/' matches no parameter"),
    (dict(exclude="teacher"), "config.optimizer.exclude='teacher': must be a list"),
    (dict(mu_dtype="float33"), "config.optimizer.mu_dtype='float33'"),
])
def test_bad_config_names_the_field(changes, message):
    cfg = lamb_cfg().to_dict()
    cfg.update(changes)
    with pytest.raises(ConfigError) as e:
        optim.build_optimizer(cfg, nest(make_params()))
    assert message in str(e.value)


def test_missing_lr_is_an_error():
    with pytest.raises(ConfigError, match=r"missing required field\(s\) \['lr'\]"):
        cfg = COMMON.optimizer("adamw", lr=1e-3).to_dict()
        del cfg["lr"]
        optim.build_optimizer(cfg, nest(make_params()))


@pytest.mark.parametrize("section, field", [
    ("", "eps"), ("", "weight_decay"), ("", "clip_norm"), ("", "bias_correction"), ("", "schedule"),
    ("schedule", "kind"), ("groups.l0", "pattern")])
def test_a_missing_field_is_named(section, field):
    """The library holds no values (they are experiments/common.optimizer's): a left-out field is an error."""
    cfg = COMMON.optimizer("lamb", lr=1e-3).to_dict()
    cfg["groups"] = dict(l0=dict(pattern="layer_0", multiplier=0.5))
    node = cfg
    for key in filter(None, section.split(".")):
        node = node[key]
    del node[field]
    where = ".".join(filter(None, ("config.optimizer", section)))
    with pytest.raises(ConfigError, match=re.escape(f"{where} is missing required field(s) ['{field}']: set "
                                                    f"{where}.{field}")):
        optim.build_optimizer(cfg, nest(make_params()))


def test_optional_fields_left_out_mean_their_neutral_values():
    """No groups, no exclusions, the parameters' dtype; a schedule of `kind` alone: the documented meanings."""
    params, grads = make_params(), make_grads(2)
    full = COMMON.optimizer("lamb", lr=1e-2).to_dict()
    short = {k: v for k, v in full.items() if k not in ("mu_dtype", "groups", "exclude")}
    short["schedule"] = dict(kind="constant")
    got, want = (run(optim.build_optimizer(cfg, nest(params)), params, grads) for cfg in (short, full))
    for p in LEAVES:
        np.testing.assert_array_equal(got[p], want[p], err_msg=p)
    decay = dict(kind="warmup_linear_decay", warmup_steps=2, total_steps=10)
    explicit = dict(decay, end_lr=0.0, power=1.0, decay_origin="warmup_end", warmup_fraction=None)
    schedules = [optim.build_schedule(dict(full, schedule=s)) for s in (decay, explicit)]
    assert [float(schedules[0](t)) for t in range(12)] == [float(schedules[1](t)) for t in range(12)]


@pytest.mark.parametrize("preset", ["mobilebert_test", "ib_bert_test"])
def test_real_model_exempt_leaves_are_exactly_the_vectors(preset):
    # In every BERT-family model, biases and norm parameters are the 1-D leaves
    # and everything decayed (kernels, embedding tables) is a matrix.
    import flax.linen as nn

    from mobilebert_jax import get_preset
    from mobilebert_jax.modeling import MobileBertForPreTraining

    model = MobileBertForPreTraining(get_preset(preset))
    abstract = nn.meta.unbox(jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((2, 8), jnp.int32)))
    for kp, leaf in jax.tree_util.tree_leaves_with_path(abstract):
        path = optim.path_of(kp)
        assert optim.is_norm_or_bias(tuple(path.split("/"))) == (leaf.ndim == 1), path
