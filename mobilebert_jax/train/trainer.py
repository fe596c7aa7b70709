"""The training loop every stage runs: mesh, sharded state, restore, step, log, evaluate, checkpoint.

Reads top to bottom. A run restarted with the same command continues from
its latest checkpoint (parameters, optimizer state, step and the data
iterator's position) and produces the same result as if it had never
stopped: the step's randomness is folded in from the step number, and the
data iterator is restored to the exact batch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import signal
from typing import Any, Callable, Iterator

import flax.linen as nn
from etils import epath
import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mobilebert_jax import checkpointing, compile_cache, experiment_config, model_source, optim, partitioning
from mobilebert_jax import plot, preemption, storage
from mobilebert_jax import workdir as workdir_lib
from mobilebert_jax.errors import DataError, NonFiniteLossError
from mobilebert_jax.data import tokenizer_record
from mobilebert_jax.data.tokenizers import loaded_once
from mobilebert_jax import metrics_writer
from mobilebert_jax.metrics_writer import MetricsWriter
from mobilebert_jax.optim import config as optim_config
from mobilebert_jax.train import step as step_lib
from mobilebert_jax.train import throughput as throughput_lib
from mobilebert_jax.train.stage import Spec, Stage, StageIO


def _log(message: str) -> None:
    if jax.process_index() == 0:
        print(message, flush=True)


@dataclasses.dataclass(frozen=True)
class Program:
    """A stage's jitted functions and where everything they take lives, built from shapes alone.

    `train` runs it; tools/aot_compile.py lowers and compiles the same train
    step for a TPU topology it does not have.
    """
    mesh: Mesh
    rules: partitioning.Rules
    optimizer: optax.GradientTransformation
    abstract_state: Any  # the TrainState as shapes with logical axis names (jax.eval_shape)
    shardings: Any  # the state's NamedShardings
    batch_sharding: NamedSharding
    frozen_shardings: Any  # None when the stage has no frozen tree
    init_state: Callable  # jitted: rng -> a fresh state, placed
    train_step: Callable  # jitted: (state, batch, frozen) -> (state, metrics); the state is donated
    eval_step: Callable  # jitted: (params, batch, frozen, step) -> sums

    frozen_abstract: Any  # the frozen tree as the step receives it (Spec.frozen_abstract)

    def state_target(self) -> Any:
        """Shapes carrying the state's shardings: what restore fills and lower takes."""
        return partitioning.with_shardings(self.abstract_state, self.shardings)

    def frozen_target(self) -> Any:
        """Shapes carrying the frozen tree's shardings (None without one): what its read fills and lower takes."""
        if self.frozen_abstract is None:
            return None
        return partitioning.with_shardings(self.frozen_abstract, self.frozen_shardings)

    @contextlib.contextmanager
    def context(self) -> Iterator[None]:
        """The mesh and logical-axis rules under which the model's activation constraints resolve."""
        with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
            yield


def build_program(config: ml_collections.ConfigDict, spec: Spec, mesh: Mesh) -> Program:
    """The optimizer, abstract state, shardings and jitted steps of `config`'s stage on `mesh`; nothing runs."""
    rules = partitioning.logical_rules(config.mesh)
    rng = jax.random.key(config.seed)
    abstract_params = jax.eval_shape(spec.init_params, rng)
    tx = optim.build_optimizer(config.optimizer, abstract_params)

    def init_state(key):
        params = spec.init_params(key)
        return step_lib.TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))

    abstract = jax.eval_shape(init_state, rng)
    shardings = partitioning.logical_shardings(abstract, mesh, rules)
    batch_sharding = partitioning.batch_sharding(mesh, rules)
    replicated = NamedSharding(mesh, PartitionSpec())
    frozen_shardings = None
    if spec.frozen_abstract is not None:
        frozen_shardings = partitioning.logical_shardings(spec.frozen_abstract, mesh, rules)
    train_step = jax.jit(
        step_lib.make_train_step(spec.objective, tx, learning_rate_fn=optim.build_schedule(config.optimizer),
                                 microbatches=config.microbatches, dropout_seed=config.seed,
                                 step_metrics_fn=spec.step_metrics),
        in_shardings=(shardings, batch_sharding, frozen_shardings), out_shardings=(shardings, replicated),
        donate_argnums=0)
    eval_step = jax.jit(step_lib.make_eval_step(spec.objective),
                        in_shardings=(shardings.params, batch_sharding, frozen_shardings, replicated),
                        out_shardings=replicated)
    return Program(mesh=mesh, rules=rules, optimizer=tx, abstract_state=abstract, shardings=shardings,
                   batch_sharding=batch_sharding, frozen_shardings=frozen_shardings,
                   frozen_abstract=spec.frozen_abstract,
                   init_state=jax.jit(lambda k: nn.meta.unbox(init_state(k)), out_shardings=shardings),
                   train_step=train_step, eval_step=eval_step)


# The config sections the trainer reads, whatever the stage (a Stage names its own in Stage.sections).
SECTIONS = dict(optimizer=optim_config.OPTIMIZER, checkpoint=checkpointing.SCHEMA, mesh=partitioning.SCHEMA)

# The file the trainer writes into the workdir when the run has reached its last step (holds that step).
FINISHED = "FINISHED"


def train(config: ml_collections.ConfigDict, workdir: str, stage: Stage) -> dict[str, float]:
    """Runs (or resumes) the stage `config` describes in `workdir`; returns the final metrics.

    From here on a SIGTERM stops the run cleanly (before the first step, if it comes that early), and once steps
    run so does Ctrl-C: the step is saved and `train` returns early with `preemption.STOP` set, for the entry
    point to exit non-zero (`preemption.exit_if_stopped`). The workdir is locked against a second run, and a
    config other than the one it was started with is refused.
    """
    # One start opens each model source and loads each tokenizer once (inherit, then read, share them).
    with checkpointing.PreemptionGuard(), model_source.opened_once(), loaded_once():
        # The guard catches a SIGTERM during set-up; the loop's guard sees it too. Everything that can be wrong
        # with the config fails here, before any data work or compile.
        stage.inherit(config)
        experiment_config.validate(config, jax.device_count(), process_count=jax.process_count())
        experiment_config.check_shared_storage(config, workdir, jax.process_count())
        with workdir_lib.WorkdirLock(workdir) as lock:
            workdir_lib.check_config_unchanged(config, workdir, {**SECTIONS, **stage.sections})
            return _train(config, workdir, stage, lock)


def _train(config: ml_collections.ConfigDict, workdir: str, stage: Stage,
           lock: workdir_lib.WorkdirLock) -> dict[str, float]:
    storage.path(workdir).mkdir(parents=True, exist_ok=True)
    experiment_config.save_resolved(config, workdir)
    cache_dir = compile_cache.use(workdir)  # before the first compile, so a restart loads instead of compiling
    compiled_before = compile_cache.counts()
    # FINISHED (written last) tells launch/tpu_run.sh's watch that this run is complete; an older one would lie.
    finished_marker = epath.Path(workdir) / FINISHED
    if jax.process_index() == 0:
        finished_marker.unlink(missing_ok=True)
    tokenizer_record.record_run(config, workdir)
    mesh = partitioning.make_mesh(config.mesh)
    io = stage.open(config, workdir)
    spec = io.spec
    program = build_program(config, spec, mesh)
    checkpoints = os.path.join(workdir, "checkpoints")

    with checkpointing.Checkpointer.from_config(checkpoints, config.checkpoint, config=config) as ckpt, \
            program.context():
        frozen = None
        if spec.frozen_abstract is not None:  # read again on every start: it is not part of the checkpoint
            frozen = model_source.read(io.frozen_source, program.frozen_target())
        if ckpt.latest_step() is not None:
            state = ckpt.restore(program.state_target(), data_iterator=io.train_iterator)
            _log(f"resumed from step {int(state.step)} (checkpoints in {checkpoints})")
        else:
            state = program.init_state(jax.random.key(config.seed))
            if io.start_from is not None:
                params = io.start_from(state.params, frozen, program.shardings.params)
                opt_state = jax.jit(program.optimizer.init, out_shardings=program.shardings.opt_state)(params)
                state = step_lib.TrainState(step=state.step, params=params, opt_state=opt_state)

        first_step = int(state.step)
        _log(f"{spec.name}: {io.describe}; steps {first_step}..{config.total_steps}, global batch "
             f"{config.batch_size}, mesh {dict(mesh.shape)}, {jax.device_count()} {jax.devices()[0].platform} "
             f"devices, workdir {workdir}")
        with MetricsWriter(workdir, total_steps=config.total_steps,
                           tokens_per_step=spec.tokens_per_example * config.batch_size,
                           progress_keys=spec.objective.progress_keys, summary=spec.summary) as writer, \
                checkpointing.PreemptionGuard((signal.SIGTERM, signal.SIGINT)) as guard:  # Ctrl-C saves too
            if guard.should_stop(first_step):  # signalled during set-up: stop before compiling the step
                _log(f"stopped by a signal before step {first_step + 1}: nothing new to save; rerun the same "
                     "command to continue")
                return {}
            state, final_metrics, preempted = _loop(config, workdir, io, program, state, frozen, ckpt, writer,
                                                    guard, lock)
        if cache_dir:
            _log(f"{compile_cache.counts().since(compiled_before).describe()} ({cache_dir})")
        if preempted:
            _write_curves(workdir, stage.curves(config))
            return final_metrics
        if ckpt.save(int(state.step), state, data_iterator=io.train_iterator, force=True):
            _log(f"checkpoint {int(state.step)}: saving")
        ckpt.wait()
    curves = _write_curves(workdir, stage.curves(config))
    _log(f"done: checkpoints in {checkpoints}, TensorBoard logs and metrics.jsonl in {workdir}, resolved config in "
         f"{os.path.join(workdir, 'config.py')}" + (f", curves in {curves}" if curves else ""))
    if jax.process_index() == 0:
        finished_marker.write_text(f"{config.total_steps}\n")
    return final_metrics


def _loop(config: ml_collections.ConfigDict, workdir: str, io: StageIO, program: Program, state: Any, frozen: Any,
          ckpt: checkpointing.Checkpointer, writer: MetricsWriter, guard: checkpointing.PreemptionGuard,
          lock: workdir_lib.WorkdirLock) -> tuple[Any, dict[str, float], bool]:
    """Steps from `state` to config.total_steps (or a preemption): (final state, last metrics, preempted)."""
    spec, mesh, rules = io.spec, program.mesh, program.rules
    total_steps, profile = config.total_steps, config.profile
    throughput = throughput_lib.Throughput(batch_size=config.batch_size, tokens_per_example=spec.tokens_per_example,
                                           flops_per_step=spec.train_flops_per_example * config.batch_size,
                                           dtype=config.model.dtype)
    final_metrics: dict[str, float] = {}

    def fetch(done: int, metrics: dict) -> None:
        """Brings step `done`'s metrics to the host, stops on a non-finite one, logs them on a log step."""
        scalars = {k: float(v) for k, v in jax.device_get(metrics).items()}
        bad = sorted(k for k, v in scalars.items() if not math.isfinite(v))
        if bad:
            ckpt.wait()  # every save started so far is a good state: finish writing it
            last = ckpt.latest_step()
            raise NonFiniteLossError(
                f"step {done}: {', '.join(bad)} is not finite; stopped without saving this state. Last good "
                + (f"checkpoint: step {last} in {os.path.join(workdir, 'checkpoints')}" if last is not None
                   else "checkpoint: none (the run diverged before its first save)"))
        throughput.add_step(scalars.pop(step_lib.REAL_TOKENS, None))  # every step, logged or not
        if done % config.log_every == 0 or done == total_steps:
            scalars.update(throughput.scalars(writer.steps_per_second))
            writer.write(done, scalars)
            final_metrics.update(scalars)

    # Step t's metrics are fetched once step t + 1 is dispatched, so the host never waits on the step it
    # just queued; a step whose state is saved, evaluated or final is fetched (and checked) first.
    pending: tuple[int, dict] | None = None
    profile_dir = os.path.join(workdir, "profile")
    trace_dir = None
    for step in range(int(state.step), total_steps):
        if step == profile.start_step and profile.num_steps > 0 and jax.process_index() == 0:
            trace_dir = storage.local_dir_for(profile_dir)  # the profiler writes local files only
            jax.profiler.start_trace(trace_dir)
        batch = partitioning.make_global_batch(next(io.train_iterator), mesh, rules)
        state, metrics = program.train_step(state, batch, frozen)
        done = step + 1
        if pending is not None:
            fetch(*pending)
        pending = (done, metrics)
        if done == profile.start_step + profile.num_steps and profile.num_steps > 0 and jax.process_index() == 0:
            jax.block_until_ready(state)
            jax.profiler.stop_trace()
            storage.publish_dir(trace_dir, profile_dir)
        evaluate_now = io.eval_batches is not None and (done % config.eval.every_steps == 0 or done == total_steps)
        save_now = ckpt.due(done)
        stop = guard.should_stop(done)
        if evaluate_now or save_now or stop or done == total_steps:
            fetch(*pending)  # a diverged state is never evaluated or saved
            pending = None
        lock.check()
        ckpt.check()  # a background save that failed stops the run at the next step, naming its step
        # Saves start before the evaluation, so an evaluation that fails (or outlasts a preemption's grace period)
        # costs no work.
        if save_now and ckpt.save(done, state, data_iterator=io.train_iterator, force=True):
            _log(f"checkpoint {done}: saving in the background")
        if stop and not save_now:
            ckpt.save(done, state, data_iterator=io.train_iterator, force=True)
        if evaluate_now:
            batches = (partitioning.make_global_batch(b, mesh, rules) for b in io.eval_batches())
            eval_metrics = step_lib.evaluate(program.eval_step, spec.objective, state.params, batches, frozen,
                                             max(done - 1, 0))
            writer.write(done, {f"eval/{k}": v for k, v in eval_metrics.items()}, progress=False)
            _log(metrics_writer.eval_line(done, eval_metrics, spec.summary))
            final_metrics.update({f"eval/{k}": v for k, v in eval_metrics.items()})
        if stop:
            ckpt.wait()
            preemption.STOP.set()  # multi-host: the sync point, not a local signal, stopped it; main exits non-zero
            _log(f"preempted: saved a checkpoint at step {done}; rerun the same command to continue")
            return state, final_metrics, True
    return state, final_metrics, False


def _write_curves(workdir: str, layout: str) -> str | None:
    """`<workdir>/curves.png` (process 0); None when nothing was logged yet (a run resumed at its last step)."""
    if jax.process_index() != 0:
        return None
    try:
        return plot.plot_run(workdir, layout=layout)
    except DataError as e:
        _log(f"no curves drawn: {e}")
        return None
