"""The training loop: build mesh, state and data; run the jitted step; log; checkpoint; resume."""

from __future__ import annotations

import dataclasses
import functools
import logging
import signal
import sys
import time
from typing import Callable, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np
from jax._src import distributed
from jax.experimental import multihost_utils
from tqdm.auto import tqdm

from allam_jax.checkpoint import workdir_files
from allam_jax.checkpoint.checkpointers import make_checkpointer
from allam_jax.checkpoint.params_io import restore_params
from allam_jax.checkpoint.workdir import Workdir
from allam_jax.core.errors import EXIT_INTERRUPTED, EXIT_PREEMPTED, ConfigError, DataError, NonFiniteLossError
from allam_jax.core.params import abstract_params
from allam_jax.core.partitioning import Partitioner
from allam_jax.core.trees import count_params
from allam_jax.eval.scorer import LoglikelihoodScorer
from allam_jax.model import Decoder, ModelConfig
from allam_jax.train import run_record
from allam_jax.train.experiment import Experiment, TrainerConfig
from allam_jax.train.goodput import GoodputRecorder, describe
from allam_jax.train.heldout_watch import Watcher
from allam_jax.train.heldout_watch import metrics as heldout_metrics
from allam_jax.train.metrics import MetricsWriter, peak_flops_per_device
from allam_jax.train.profiler import StepProfiler
from allam_jax.train.program import build_train_program
from allam_jax.train.state import TrainState, init_train_state

log = logging.getLogger(__name__)



class Preempted(SystemExit):
    """SIGTERM (or, in a one-process run, SIGINT: Ctrl-C) arrived; the state was saved and the process exits with
    143 (130 for SIGINT)."""


def _global_batch(local: dict[str, np.ndarray], sharding) -> dict[str, jax.Array]:
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items()}


def _accumulate(window_sums: Callable[[dict], dict], window: Optional[dict[str, jax.Array]],
                metrics: dict[str, jax.Array], step) -> dict[str, jax.Array]:
    """The logging window's running sums, kept on the device: the first step whose loss was not finite
    (-1: none) and the objective's own window sums (``Objective.window_sums``). The host reads them only at log
    and save steps, so the steps between queue up on the accelerator without a sync."""
    loss = metrics["loss"].astype(jnp.float32)
    if window is None:
        window = {"first_bad": jnp.int32(-1), "bad_loss": jnp.float32(0), "objective": None}
    first = (window["first_bad"] < 0) & ~jnp.isfinite(loss)
    sums = window_sums(metrics)
    if window["objective"] is not None:
        sums = jax.tree_util.tree_map(jnp.add, window["objective"], sums)
    return {"first_bad": jnp.where(first, step, window["first_bad"]).astype(jnp.int32),
            "bad_loss": jnp.where(first, loss, window["bad_loss"]), "objective": sums}


class _Preemption:
    """Where a stop request comes from. One process: its own SIGTERM handler (a flag read between steps).
    Several: JAX's preemption service, whose handler catches SIGTERM in whichever process gets it and tells
    the others; :meth:`reached` turns True on every process at the same step (the largest step any has
    reached, plus one), so all save that one step together. Held until the last save is written.

    In a one-process run Ctrl-C (SIGINT) saves the step too (exit 130); a second Ctrl-C interrupts at once."""

    SIGNALS = {signal.SIGTERM: EXIT_PREEMPTED, signal.SIGINT: EXIT_INTERRUPTED}

    def __init__(self):
        self.shared = jax.process_count() > 1 and distributed.global_state.preemption_sync_manager is not None
        self.raised = False
        self.signum = signal.SIGTERM
        self._previous: dict = {}

    def __enter__(self):
        if self.shared:  # a Python handler would replace JAX's, and the other processes would never hear of it
            return self
        try:
            self._previous = {s: signal.signal(s, self._handler) for s in self.SIGNALS}
        except ValueError:  # not the main thread: leave signals alone
            self._previous = {}
        return self

    def _handler(self, signum, frame):
        self.raised, self.signum = True, signum
        if signum == signal.SIGINT:  # a second Ctrl-C does not wait for the save
            signal.signal(signal.SIGINT, signal.default_int_handler)

    @property
    def exit_code(self) -> int:
        return self.SIGNALS[self.signum]

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    def reached(self, step: int) -> bool:
        """Whether to save ``step`` and stop; every process must ask at every step."""
        if self.shared:
            return multihost_utils.reached_preemption_sync_point(step)
        return self.raised

    def __exit__(self, *exc):
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)


def train(exp: Experiment, workdir: Union[str, Workdir], on_accepted: Optional[Callable[[], None]] = None) -> dict[str, float]:
    """Trains to ``trainer.num_steps``, resuming from ``WORKDIR/checkpoints`` when it holds a step.

    ``on_accepted`` runs once the run is known to go ahead (config built, checkpoint restored or state
    initialised), before the first step: ``allam train`` writes ``WORKDIR/config.gin`` there, so a refused run
    leaves the workdir's record of the accepted one as it was. Returns the last logged metrics.
    """
    started = time.time()
    partitioner = Partitioner.create(exp.partitioning)
    program = build_train_program(exp, partitioner)
    is_main = jax.process_index() == 0
    with Workdir.at(workdir).create().lock(enabled=is_main) as wd:
        return _train_in_workdir(exp, program, partitioner, wd, is_main, on_accepted, started)


def _train_in_workdir(exp: Experiment, program, partitioner: Partitioner, wd: Workdir, is_main: bool,
                      on_accepted: Optional[Callable[[], None]], started: float) -> dict[str, float]:
    """The body of :func:`train`, run while this process holds the workdir lock."""
    tcfg = exp.trainer
    model, tx, abstract, shardings = program.model, program.tx, program.abstract_state, program.shardings
    data_iter = exp.data.make_iterator(tcfg.seq_len, tcfg.batch_size, jax.process_index(), jax.process_count())
    if data_iter.vocab is not None:
        from allam_jax.data.vocabularies import check_fits_model, describe_vocab

        check_fits_model(data_iter.vocab, exp.model.vocab_size, f"tokenizer {describe_vocab(data_iter.vocab)}")
    watcher = _watcher(exp, program, partitioner, data_iter, wd, is_main)  # its files read before anything
    checkpointer = make_checkpointer(wd, exp.checkpoint, partitioner.mesh, abstract, tcfg.checkpoint_every,
                                     tcfg.keep_checkpoints, tcfg.async_checkpointing)
    restored = checkpointer.restore_latest(abstract)
    record = run_record.describe(exp, jax.process_count())
    if restored is not None:
        state, data_state, start = restored
        run_record.check_resume(run_record.read(wd), record, start, tcfg.num_steps,
                                str(checkpointer.directory), tcfg.accept_new_data_order)
        where = str(checkpointer.directory / str(start))
        data_iter.set_state(workdir_files.open_data_position(data_state, start, where))
        log.info("resumed from step %d in %s", start, checkpointer.directory)
    else:
        state = init_train_state(model, tx, partitioner, tcfg.seed)
        if tcfg.init_from:
            params = restore_params(tcfg.init_from, abstract.params)
            state = state.replace(params=params)
            log.info("initialised parameters from %s (fresh optimizer and schedule)", tcfg.init_from)
        objective = program.objective
        if objective.needs_extra_state():  # a real copy: the state's buffers are donated to each step
            copy = partitioner.jit(lambda p: jax.tree_util.tree_map(jnp.copy, objective.init_extra_state(p)),
                                   out_shardings=shardings.params)
            state = state.replace(ref_params=copy(state.params))
        start = 0

    if is_main:
        run_record.write(wd, record)
    if on_accepted is not None:
        on_accepted()
    writer = MetricsWriter(wd, enabled=is_main, tensorboard=tcfg.tensorboard)
    bar = tqdm(total=tcfg.num_steps, initial=start, disable=not (tcfg.progress_bar and is_main), desc="train", unit="step",
               mininterval=0.1 if sys.stderr.isatty() else 10.0)
    profiler = StepProfiler(tcfg.profile_steps, start, str(wd.tensorboard),
                            enabled=is_main or tcfg.profile_all_processes, end_step=tcfg.num_steps)
    recorder = GoodputRecorder(wd, start, write=is_main, started=started)
    with _Preemption() as preemption, recorder:  # held until the last save is written: a late SIGTERM must not cut it
        try:
            steps = _Steps(exp, program, partitioner, data_iter, checkpointer, writer, bar, preemption, recorder,
                           profiler, watcher)
            return steps.run(state, start)
        finally:
            profiler.stop()
            ended = sys.exc_info()[0]
            if is_main and (ended is None or issubclass(ended, Preempted)):  # an error's message stays one line
                log.info("%s (WORKDIR/goodput.json)", describe(recorder.summary()))


def _watcher(exp: Experiment, program, partitioner: Partitioner, data_iter, wd: Workdir,
             is_main: bool) -> Optional[Watcher]:
    """The held-out watch of ``exp.watch``, scoring with the run's tokenizer and mesh (None when off)."""
    if not exp.watch.enabled:
        return None
    if data_iter.vocab is None:
        raise ConfigError("HeldoutWatch needs the run's tokenizer, and this run's data gives none")
    from allam_jax.data.vocabularies import bos_id

    vocab = data_iter.vocab
    scorer = LoglikelihoodScorer(exp.model, None, lambda text: [int(t) for t in vocab.encode(text)], bos_id(vocab),
                                 batch_size=program.rows_per_step, partitioner=partitioner)
    return Watcher(exp.watch, scorer, wd, is_main)


@dataclasses.dataclass(frozen=True)
class StepInfo:
    """What a hook sees after a step: the state, the step's metrics (device arrays), and whether a stop was
    requested or the held-out watch is due at this step."""

    step: int
    state: TrainState
    metrics: dict[str, jax.Array]
    stop: bool = False
    watch: bool = False


@dataclasses.dataclass(frozen=True)
class Hook:
    """``fn(info)`` after every ``every``-th step (0: never by count) and wherever ``when(info)`` holds. Due hooks
    run in the order they were added, inside the one host sync of that step (the other steps queue up on the
    device)."""

    fn: Callable[[StepInfo], None]
    every: int = 1
    when: Optional[Callable[[StepInfo], bool]] = None

    def due(self, info: StepInfo) -> bool:
        return (self.every > 0 and info.step % self.every == 0) or (self.when is not None and self.when(info))


class _Steps:
    """The loop proper: it only steps; logging, saving, goodput, the held-out guard and preemption are hooks
    (:meth:`add_hook`), and the objective names its own window metrics."""

    def __init__(self, exp: Experiment, program, partitioner: Partitioner, data_iter, checkpointer, writer, bar,
                 preemption: _Preemption, recorder: GoodputRecorder, profiler: StepProfiler,
                 watcher: Optional[Watcher]):
        self.exp, self.tcfg, self.program, self.partitioner = exp, exp.trainer, program, partitioner
        self.data_iter, self.checkpointer, self.writer, self.bar = data_iter, checkpointer, writer, bar
        self.preemption, self.recorder, self.profiler, self.watcher = preemption, recorder, profiler, watcher
        self.accumulate = partitioner.jit(functools.partial(_accumulate, program.objective.window_sums))
        self.last: dict[str, float] = {}
        self.window: Optional[dict[str, jax.Array]] = None
        self.window_start, self.window_steps = time.perf_counter(), 0
        self.sums: dict = {}
        self.heldout: Optional[dict] = None
        self.hooks: list[Hook] = []
        self._add_builtin_hooks()

    def add_hook(self, fn: Callable[[StepInfo], None], every: int = 1,
                 when: Optional[Callable[[StepInfo], bool]] = None) -> None:
        self.hooks.append(Hook(fn, every, when))

    def _add_builtin_hooks(self) -> None:
        last = self.tcfg.num_steps
        log_due = lambda i: i.step == last or i.watch  # noqa: E731
        self.add_hook(self._log, self.tcfg.log_every, log_due)
        self.add_hook(self._save, 0, lambda i: self._regular_save_due(i) or self.checkpointer.due(i.step))
        self.add_hook(lambda i: self.recorder.write(), self.tcfg.log_every, log_due)
        self.add_hook(self._check_heldout, 0, lambda i: i.watch)
        self.add_hook(self._stop, 0, lambda i: i.stop)

    def run(self, state: TrainState, start: int) -> dict[str, float]:
        try:
            with self.partitioner.activate():
                if self.watcher is not None:
                    with _host_sync(), self.recorder.timing("eval"):
                        self.watcher.at_start(state.params, start)
                for step in range(start + 1, self.tcfg.num_steps + 1):
                    batch = self._next_batch(step, start, state)
                    if batch is None:
                        break
                    state, metrics = self._step(step, state, batch)
                    info = StepInfo(step, state, metrics, stop=self.preemption.reached(step),
                                    watch=self.watcher is not None and self.watcher.due(step))
                    due = [hook for hook in self.hooks if hook.due(info)]
                    if due:
                        with _host_sync():  # the only host reads of the step's results
                            self._run_hooks(info, due)
        finally:
            self.bar.close()
            self.writer.close()
            self.checkpointer.close()
        return self.last

    def _next_batch(self, step: int, start: int, state: TrainState) -> Optional[dict[str, jax.Array]]:
        """The step's global batch; None when the data ran out (the last step taken is saved first)."""
        try:
            with self.recorder.timing("data"):
                local_batch = next(self.data_iter)
        except StopIteration:
            if step == 1:  # not one batch: nothing to train on, which is bad input, not a finished run
                raise DataError("the training data gave no batch at all (every example skipped or the files "
                                "empty: see the warnings above); nothing was trained") from None
            log.info("the data ran out (all epochs done) before step %d; stopping", step)
            if step - 1 > start:
                with _host_sync():
                    _check_finite(self.window, self.checkpointer)
                    self.save(step - 1, state)
            return None
        with self.recorder.timing("data"):
            return _global_batch(local_batch, self.program.batch_sharding)

    def _step(self, step: int, state: TrainState, batch: dict) -> tuple[TrainState, dict[str, jax.Array]]:
        self.profiler.before(step)
        with self.profiler.annotate(step), self.recorder.timing("step"):
            state, metrics = self.program.step_fn(state, batch)
        self.profiler.after(step, state)
        self.checkpointer.check_errors()  # a failed background save stops the run here, not steps later
        self.window = self.accumulate(self.window, metrics, step)
        self.window_steps += 1
        self.bar.update(1)
        return state, metrics

    def _run_hooks(self, info: StepInfo, due: list[Hook]) -> None:
        with self.recorder.timing("step"):  # waiting here is waiting for the device's steps
            self.sums = _check_finite(self.window, self.checkpointer)
        self.heldout = None
        for hook in due:
            hook.fn(info)

    def _log(self, info: StepInfo) -> None:
        """Logs the window: the step's scalar metrics, throughput, MFU, the objective's window metrics, the data
        stage, the held-out bits/byte when due and goodput."""
        with self.recorder.timing("step"):
            metrics = jax.device_get(info.metrics)
        elapsed, n = time.perf_counter() - self.window_start, self.window_steps
        last = {k: float(v) for k, v in metrics.items() if np.ndim(v) == 0 and k != "num_tokens"}
        last.update(self._throughput(elapsed, n))
        if self.sums.get("objective") is not None:
            last.update(self.program.objective.window_report(self.sums["objective"], list(self.data_iter.languages)))
        if self.data_iter.stage is not None:  # a staged mixture says where it is
            last["data_stage"] = float(self.data_iter.stage)
        with self.recorder.timing("eval"):
            self.heldout = self.watcher.evaluate(info.state.params) if info.watch else None
        if self.heldout is not None:
            last.update(heldout_metrics(self.heldout))
        last.update(self.recorder.window(n))
        self.writer.write(info.step, last)
        self.bar.set_postfix(loss=f"{last['loss']:.3f}", tok_s=f"{last['tokens_per_s']:.0f}")
        self.last, self.window_start, self.window_steps, self.window = last, time.perf_counter(), 0, None

    def _throughput(self, elapsed: float, steps: int) -> dict[str, float]:
        exp, tokens = self.exp, self.program.rows_per_step * self.tcfg.seq_len
        peak = peak_flops_per_device(self.tcfg.peak_flops_per_device, exp.model.dtype) * jax.device_count()
        flops = exp.model.training_flops_per_token(self.tcfg.seq_len) * tokens  # PaLM's count
        causal = exp.model.training_flops_per_token(self.tcfg.seq_len, causal=True) * tokens
        return {"tokens_per_s": tokens * steps / elapsed, "mfu": flops * steps / elapsed / peak,
                "mfu_causal": causal * steps / elapsed / peak}

    def save(self, step: int, state: TrainState, force: bool = True) -> None:
        with self.recorder.timing("step"):  # the device finishing the step is step time, not the save's
            jax.block_until_ready(state)
        with self.recorder.timing("checkpoint"):
            position = workdir_files.seal_data_position(self.data_iter.get_state(), step)
            saved = self.checkpointer.save(step, state, position, force=force)
        if saved or force:
            self.recorder.saved_step(step)

    def _regular_save_due(self, info: StepInfo) -> bool:
        return info.step % self.tcfg.checkpoint_every == 0 or info.step == self.tcfg.num_steps or info.stop

    def _save(self, info: StepInfo) -> None:
        """A regular save; else, when only the emergency checkpoints' host-local tier is due, a local one."""
        self.save(info.step, info.state, force=self._regular_save_due(info))

    def _check_heldout(self, info: StepInfo) -> None:
        def save_and_wait() -> None:
            if not self._regular_save_due(info):
                self.save(info.step, info.state)
            with self.recorder.timing("checkpoint"):
                self.checkpointer.wait()

        self.watcher.check(self.heldout, info.step, save_and_wait)

    def _stop(self, info: StepInfo) -> None:
        with self.recorder.timing("checkpoint"):
            self.checkpointer.wait()
        log.warning("%s: saved step %d to %s; exiting", self.preemption.name, info.step, self.checkpointer.directory)
        raise Preempted(self.preemption.exit_code)


def _check_finite(window: Optional[dict[str, jax.Array]], checkpointer) -> dict:
    """The window's sums on the host; a non-finite loss in it stops the run before anything is saved."""
    sums = jax.device_get(window) if window is not None else {"first_bad": -1}
    if sums["first_bad"] >= 0:
        raise NonFiniteLossError(f"loss is {float(sums['bad_loss'])} at step {int(sums['first_bad'])}; stopped "
                                 f"without saving this state (last checkpoint: step {checkpointer.latest_step()})")
    return sums


def _host_sync():
    """Where the loop reads device results on purpose (a test runs the other steps with device-to-host
    transfers disallowed)."""
    return jax.transfer_guard_device_to_host("allow")


def param_count_and_flops(model_cfg: ModelConfig, seq_len: Optional[int] = None) -> dict[str, float]:
    """Parameter count from ``jax.eval_shape`` (nothing allocated) and FLOPs per token."""
    n = count_params(abstract_params(Decoder(model_cfg)))
    return {
        "params": n,
        "forward_flops_per_token": model_cfg.flops_per_token(seq_len),
        "train_flops_per_token": model_cfg.training_flops_per_token(seq_len),
    }


__all__ = ["Experiment", "Hook", "NonFiniteLossError", "Preempted", "StepInfo", "TrainState", "TrainerConfig",
           "param_count_and_flops", "train"]
