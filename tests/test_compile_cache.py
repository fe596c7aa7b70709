"""Where compile_cache.use puts JAX's persistent compilation cache, and when it leaves the user's choice alone.

A restarted run loading its steps from the cache: tests/test_trainer.py::test_resume_after_sigterm_is_exact.
"""

from __future__ import annotations

import os

import jax
import pytest
from jax.experimental.compilation_cache import compilation_cache

from mobilebert_jax import compile_cache

OPTIONS = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
           "jax_persistent_cache_min_entry_size_bytes", "jax_enable_compilation_cache")


@pytest.fixture(autouse=True)
def restore_jax_cache_settings(monkeypatch):
    saved = {name: getattr(jax.config, name) for name in OPTIONS}
    # Each test starts from JAX's defaults: a run trained earlier in this process (another test file) leaves its
    # workdir's cache configured, which `use` would take for the user's own choice.
    jax.config.update("jax_compilation_cache_dir", None)
    jax.config.update("jax_enable_compilation_cache", True)
    monkeypatch.setattr(compile_cache, "_ours", None)
    yield
    for name, value in saved.items():
        jax.config.update(name, value)
    compilation_cache.reset_cache()


def test_each_workdir_gets_its_own_cache_with_thresholds_small_enough_for_cpu_runs(tmp_path):
    first = compile_cache.use(str(tmp_path / "a"))
    assert first == os.path.join(str(tmp_path), "a", compile_cache.DIRNAME)
    assert jax.config.jax_compilation_cache_dir == first
    assert jax.config.jax_persistent_cache_min_compile_time_secs == compile_cache.MIN_COMPILE_TIME_SECS < 1.0
    assert jax.config.jax_persistent_cache_min_entry_size_bytes == -1
    second = compile_cache.use(str(tmp_path / "b"))  # the pipeline's next stage, in the same process
    assert second == jax.config.jax_compilation_cache_dir == os.path.join(str(tmp_path), "b", compile_cache.DIRNAME)


def test_a_relative_workdir_is_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert compile_cache.use("run") == os.path.join(str(tmp_path), "run", compile_cache.DIRNAME)


def test_gs_workdir_keeps_its_url():
    assert compile_cache.use("gs://bucket/runs/x") == "gs://bucket/runs/x/" + compile_cache.DIRNAME


def test_a_cache_dir_the_user_chose_is_kept(tmp_path):
    jax.config.update("jax_compilation_cache_dir", str(tmp_path / "mine"))
    assert compile_cache.use(str(tmp_path / "run")) == str(tmp_path / "mine")
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / "mine")


def test_a_disabled_cache_stays_off(tmp_path):
    jax.config.update("jax_enable_compilation_cache", False)
    before = jax.config.jax_compilation_cache_dir
    assert compile_cache.use(str(tmp_path / "run")) is None
    assert jax.config.jax_compilation_cache_dir == before

