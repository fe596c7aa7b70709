"""benchmarks/ablation_small.py: each variant's stages are the experiment it claims to be (no training here)."""

from __future__ import annotations

import importlib.util
import os
import sys

import jax
import pytest

from mobilebert_jax import experiment_config
from mobilebert_jax.distill import config as distill_config
from mobilebert_jax.experiments import pipeline

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCALE = pipeline.default_scale()
JOB = pipeline  # experiments/pipeline.py: each stage's config at the README job's scale


@pytest.fixture(scope="module")
def ablation():
    spec = importlib.util.spec_from_file_location("ablation_small", os.path.join(ROOT, "benchmarks",
                                                                                  "ablation_small.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _stages(ablation, name, seed=0):
    teacher = JOB.teacher_config(SCALE, "/nonexistent/data")
    return ablation.variant_stages(name, seed, SCALE, teacher.model, "T", "/nonexistent/data", "/w")


def test_every_variant_spends_the_same_student_budget(ablation):
    for name in ablation.VARIANTS:
        stages = _stages(ablation, name)
        for _, c, _ in stages:
            experiment_config.validate(c, jax.device_count())
        total = sum(c.total_steps for _, c, _ in stages)
        expected = SCALE.pd_steps if name == "diagnostic: PD only, half the budget" else SCALE.student_steps
        assert total == expected, name
        # A second stage starts from the first one's student; every stage reads the same teacher.
        if len(stages) == 2:
            assert stages[1][1].distill.student_init == stages[0][2]
        assert {c.distill.teacher for _, c, _ in stages} == {"T"}
        # Every variant runs with TF1's defaults (REFERENCE: TF1 is the reference for the released numbers).
        for _, c, _ in stages:
            d = distill_config.read(c.distill)
            tf1 = d.layer_loss_scaling == "tf1" and not d.train_embedding_norm_in_transfer
            assert tf1 == (name != "progressive, pre-TF1 settings" or d.strategy == "pd"), name


def test_variants_change_only_what_their_names_say(ablation):
    weights = lambda name, i=0: distill_config.read(_stages(ablation, name)[i][1].distill).weights  # noqa: E731
    alpha = lambda name, i: distill_config.read(_stages(ablation, name)[i][1].distill).alpha  # noqa: E731
    full = weights("progressive")
    assert all(v > 0 for k, v in full.items() if k in ("feature_map", "mean", "variance", "attention"))
    assert weights("progressive, without AT") == {**full, "attention": 0.0}
    assert weights("progressive, without FMT") == {**full, "feature_map": 0.0, "mean": 0.0, "variance": 0.0}
    assert alpha("progressive", 1) == 0.5 and alpha("progressive, without PD", 1) == 1.0
    pre = distill_config.read(_stages(ablation, "progressive, pre-TF1 settings")[0][1].distill)
    assert (pre.train_embedding_norm_in_transfer, pre.layer_loss_scaling) == (True, "none")
    assert pre.weights == full
    hard = "diagnostic: hard labels only (alpha = 1), teacher's embeddings and heads"
    assert alpha(hard, 0) == 1.0 and _stages(ablation, hard)[0][1].distill.strategy == "pd"
    assert [c.distill.strategy for _, c, _ in _stages(ablation, "joint")] == ["joint", "pd"]
    assert [c.distill.strategy for _, c, _ in _stages(ablation, "auxiliary")] == ["auxiliary"]


def test_seeds_get_their_own_runs(ablation):
    seed0, seed2 = _stages(ablation, "joint", 0), _stages(ablation, "joint", 2)
    assert [c.seed for _, c, _ in seed2] == [2, 2]
    assert not {d for _, _, d in seed0} & {d for _, _, d in seed2}


def test_table_gives_mean_and_std_over_seeds(ablation):
    runs = [dict(mlm_accuracy=a, mlm_loss=5.0, nsp_accuracy=0.5) for a in (0.20, 0.22, 0.24)]
    text = ablation.markdown([dict(variant="joint", runs=runs)], "cmd", SCALE, [0, 1, 2], {"joint": 60.0}, 100)
    assert "| joint | 22.00% ± 2.00 | 20.00 / 22.00 / 24.00 | 5.000 ± 0.000 | 50.0% ± 0.0 |" in text


def test_only_names_variants_by_their_run_directories(ablation):
    # --only is a list flag, which splits on the commas the display names hold.
    slugs = [ablation._slug(name) for name in ablation.VARIANTS]
    assert len(set(slugs)) == len(slugs) and not any("," in s for s in slugs)
    assert "progressive_without_at" in slugs and "no_transfer" in slugs
