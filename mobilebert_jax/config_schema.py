"""Config sections as schemas: a section's fields, which of them may be left out and what leaving one out means.

Every section a library module reads (`config.optimizer`, `config.data`, `config.distill`, `config.checkpoint`,
`config.mesh`, a sweep file's `get_sweep()`) is a `Schema`, and `Schema.read` is the one reader: it takes a
ConfigDict or a mapping, refuses unknown fields and missing required ones with a ConfigError naming them, and fills
in the optional fields. An optional field's default is its neutral meaning, the behaviour of a config that does not
set it; that is also what a run recorded before the field existed computed, so `workdir.check_config_unchanged`
takes a field absent from a recorded config as its default (`Schema.default`).

The values checks of single fields (`positive_number`, `step_count`) live here too; what a field's value means is
checked by the module that uses it.
"""

from __future__ import annotations

import math

import dataclasses
from typing import Any, Mapping

import ml_collections

from mobilebert_jax.errors import ConfigError

NO_DEFAULT = "<absent>"  # what `Schema.default` returns for a field that has none (a required or unknown one)


@dataclasses.dataclass(frozen=True)
class Schema:
    """One config section. `fields` in the order errors list them; `optional` maps the fields that may be left out
    to their default; `sections` are nested sections (`config.optimizer.schedule`), `entries` sections whose every
    value is a section of one schema (`config.optimizer.groups.<name>`)."""
    fields: tuple[str, ...]
    optional: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    sections: Mapping[str, "Schema"] = dataclasses.field(default_factory=dict)
    entries: Mapping[str, "Schema"] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        undeclared = (set(self.optional) | set(self.sections) | set(self.entries)) - set(self.fields)
        if undeclared:
            raise ValueError(f"schema names fields it does not declare: {sorted(undeclared)}")

    def read(self, cfg: Any, where: str) -> dict[str, Any]:
        """`cfg` as a plain dict over `fields`, the optional ones filled in; unknown and missing fields are
        ConfigErrors naming `where` (the section's full name, `config.optimizer.schedule`)."""
        if isinstance(cfg, ml_collections.ConfigDict):
            items = {k: cfg[k] for k in cfg.keys()}
        elif isinstance(cfg, Mapping):
            items = dict(cfg)
        else:
            raise ConfigError(f"{where} must be a ConfigDict or dict, got {type(cfg).__name__}")
        unknown = sorted(set(items) - set(self.fields))
        if unknown:
            raise ConfigError(f"{where} has unknown field(s) {unknown}; known fields: {list(self.fields)}")
        out = dict(self.optional)
        out.update(items)
        missing = [f for f in self.fields if f not in out]
        if missing:
            raise ConfigError(f"{where} is missing required field(s) {sorted(missing)}: set "
                              + ", ".join(f"{where}.{f}" for f in missing))
        return out

    def default(self, path: tuple[str, ...]) -> Any:
        """The default of the field at `path` under this section (("schedule", "power"); an entry's name is one
        step: ("groups", "l0", "multiplier")), or NO_DEFAULT."""
        if not path:
            return NO_DEFAULT
        head, rest = path[0], path[1:]
        if not rest:
            return self.optional.get(head, NO_DEFAULT)
        if head in self.sections:
            return self.sections[head].default(rest)
        if head in self.entries and len(rest) > 1:
            return self.entries[head].default(rest[1:])
        return NO_DEFAULT


def positive_number(value: Any, where: str, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{where}={value!r}: must be a number")
    # NaN passes every comparison below and would surface only as a non-finite loss after compiling.
    if not math.isfinite(value):
        raise ConfigError(f"{where}={value!r}: must be a finite number")
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{where}={value!r}: must be {'non-negative' if allow_zero else 'positive'}")
    return float(value)


def step_count(value: Any, where: str, allow_zero: bool = True) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{where}={value!r}: must be an integer number of steps")
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{where}={value!r}: must be {'non-negative' if allow_zero else 'positive'}")
    return value
