"""Learning-rate schedules from `config.optimizer.schedule`, built from optax's schedules."""

from __future__ import annotations

from typing import Any

import optax

from mobilebert_jax.errors import ConfigError
from mobilebert_jax import config_schema
from mobilebert_jax.optim import config as cfg_lib


def build_schedule(opt_cfg: Any, where: str = "config.optimizer") -> optax.Schedule:
    """step -> learning rate for `config.optimizer` (its `lr` and `schedule` fields).

    kinds: `constant`; `warmup_constant` (0 -> lr linearly over the warmup,
    then lr); `warmup_linear_decay` / `warmup_polynomial_decay` (warmup, then
    (lr - end_lr) * (1 - s / S)^power + end_lr until `total_steps`, end_lr
    after). With `decay_origin="warmup_end"` s counts from the end of warmup
    and S = total_steps - warmup; with "step_zero" (TF1 BERT) s is the global
    step and S = total_steps, so the rate right after warmup is already
    slightly below lr.
    """
    opt = cfg_lib.OPTIMIZER.read(opt_cfg, where)
    lr = config_schema.positive_number(opt["lr"], f"{where}.lr")
    where = f"{where}.schedule"
    s = cfg_lib.SCHEDULE.read(opt["schedule"], where)
    kind = s["kind"]
    if kind not in cfg_lib.SCHEDULE_KINDS:
        raise ConfigError(f"{where}.kind={kind!r}: choose one of {list(cfg_lib.SCHEDULE_KINDS)}")
    if s["decay_origin"] not in cfg_lib.DECAY_ORIGINS:
        raise ConfigError(f"{where}.decay_origin={s['decay_origin']!r}: choose one of {list(cfg_lib.DECAY_ORIGINS)}")
    decays = kind in ("warmup_linear_decay", "warmup_polynomial_decay")

    if kind == "constant":
        for field, unused in (("warmup_steps", 0), ("warmup_fraction", None), ("total_steps", None)):
            if s[field] != unused:
                raise ConfigError(f"{where}.{field}={s[field]!r} does not apply to kind 'constant'")
        return optax.constant_schedule(lr)

    total = s["total_steps"]
    if total is not None:
        total = config_schema.step_count(total, f"{where}.total_steps", allow_zero=False)
    elif decays:
        raise ConfigError(f"{where}.total_steps is required for kind {kind!r}")
    warmup = _warmup_steps(s, total, where)
    if kind == "warmup_constant":
        if warmup == 0:
            raise ConfigError(f"{where}: kind 'warmup_constant' needs warmup_steps > 0 (or warmup_fraction)")
        return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), optax.constant_schedule(lr)], [warmup])

    if total <= warmup:
        raise ConfigError(f"{where}.total_steps={total} must exceed the warmup ({warmup} steps)")
    end_lr = config_schema.positive_number(s["end_lr"], f"{where}.end_lr", allow_zero=True)
    if end_lr > lr:
        raise ConfigError(f"{where}.end_lr={end_lr!r} exceeds {where.rsplit('.', 1)[0]}.lr={lr!r}")
    power = config_schema.positive_number(s["power"], f"{where}.power")
    if kind == "warmup_linear_decay" and power != 1.0:
        raise ConfigError(f"{where}.power={power!r} applies to kind 'warmup_polynomial_decay' only")

    if s["decay_origin"] == "warmup_end":
        decay = optax.polynomial_schedule(lr, end_lr, power, total - warmup)
    else:
        from_zero = optax.polynomial_schedule(lr, end_lr, power, total)
        decay = lambda count: from_zero(count + warmup)  # noqa: E731  (join_schedules passes count - warmup)
    if warmup == 0:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), decay], [warmup])


def _warmup_steps(s: dict, total: int | None, where: str) -> int:
    if s["warmup_fraction"] is None:
        return config_schema.step_count(s["warmup_steps"], f"{where}.warmup_steps")
    if s["warmup_steps"]:
        raise ConfigError(f"{where}: set warmup_steps or warmup_fraction, not both")
    fraction = s["warmup_fraction"]
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 <= fraction < 1:
        raise ConfigError(f"{where}.warmup_fraction={fraction!r}: must be a fraction in [0, 1)")
    if total is None:
        raise ConfigError(f"{where}.warmup_fraction needs total_steps")
    return int(round(fraction * total))
