"""The training loop: build mesh, state and data; run the jitted step; log; checkpoint; resume."""

from __future__ import annotations

import logging
import signal
import sys
import time
from typing import Callable, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from allam_jax.checkpoint import workdir_files
from allam_jax.checkpoint.checkpointers import make_checkpointer
from allam_jax.checkpoint.workdir import Workdir
from allam_jax.checkpoint.params_io import restore_params
from allam_jax.core.errors import EXIT_INTERRUPTED, EXIT_PREEMPTED, ConfigError, DataError, NonFiniteLossError
from allam_jax.core.params import abstract_params
from allam_jax.core.partitioning import Partitioner
from allam_jax.core.trees import count_params
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


@jax.jit
def _accumulate(window: Optional[dict[str, jax.Array]], metrics: dict[str, jax.Array], step) -> dict[str, jax.Array]:
    """The logging window's running sums, kept on the device: the first step whose loss was not finite
    (-1: none) and the per-language loss sums. The host reads them only at log and save steps, so the
    steps between queue up on the accelerator without a sync."""
    loss = metrics["loss"].astype(jnp.float32)
    if window is None:
        window = {"first_bad": jnp.int32(-1), "bad_loss": jnp.float32(0)}
        if "lang_ce_sum" in metrics:
            window["lang"] = jnp.zeros((2,) + metrics["lang_ce_sum"].shape, jnp.float32)
    first = (window["first_bad"] < 0) & ~jnp.isfinite(loss)
    out = {"first_bad": jnp.where(first, step, window["first_bad"]).astype(jnp.int32),
           "bad_loss": jnp.where(first, loss, window["bad_loss"])}
    if "lang" in window:
        out["lang"] = window["lang"] + jnp.stack([metrics["lang_ce_sum"], metrics["lang_weight_sum"]])
    return out


class _Preemption:
    """Where a stop request comes from. One process: its own SIGTERM handler (a flag read between steps).
    Several: JAX's preemption service, whose handler catches SIGTERM in whichever process gets it and tells
    the others; :meth:`reached` turns True on every process at the same step (the largest step any has
    reached, plus one), so all save that one step together. Held until the last save is written.

    In a one-process run Ctrl-C (SIGINT) saves the step too (exit 130); a second Ctrl-C interrupts at once."""

    SIGNALS = {signal.SIGTERM: EXIT_PREEMPTED, signal.SIGINT: EXIT_INTERRUPTED}

    def __init__(self):
        from jax._src import distributed

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
            from jax.experimental import multihost_utils

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
            return _run_steps(exp, program, partitioner, data_iter, state, start, checkpointer, writer, bar,
                              preemption, watcher, recorder, profiler)
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
    from allam_jax.eval.scorer import LoglikelihoodScorer

    vocab = data_iter.vocab
    scorer = LoglikelihoodScorer(exp.model, None, lambda text: [int(t) for t in vocab.encode(text)], bos_id(vocab),
                                 batch_size=program.rows_per_step, partitioner=partitioner)
    return Watcher(exp.watch, scorer, wd, is_main)


def _run_steps(exp: Experiment, program, partitioner: Partitioner, data_iter, state, start: int, checkpointer, writer, bar,
               preemption: _Preemption, watcher: Optional[Watcher], recorder: GoodputRecorder,
               profiler: StepProfiler) -> dict[str, float]:
    tcfg = exp.trainer
    step_fn, batch_sharding = program.step_fn, program.batch_sharding
    languages = list(data_iter.languages)
    tokens_per_step = program.rows_per_step * tcfg.seq_len
    flops_per_step = exp.model.training_flops_per_token(tcfg.seq_len) * tokens_per_step  # PaLM's count
    causal_flops_per_step = exp.model.training_flops_per_token(tcfg.seq_len, causal=True) * tokens_per_step
    peak = peak_flops_per_device(tcfg.peak_flops_per_device, exp.model.dtype) * jax.device_count()
    last: dict[str, float] = {}
    window_start, window_steps = time.perf_counter(), 0
    window: Optional[dict[str, jax.Array]] = None
    try:
        with partitioner.activate():
            if watcher is not None:
                with _host_sync(), recorder.timing("eval"):
                    watcher.at_start(state.params, start)

            def save(step: int, state, force: bool = True) -> None:
                with recorder.timing("step"):  # the device finishing the step is step time, not the save's
                    jax.block_until_ready(state)
                with recorder.timing("checkpoint"):
                    position = workdir_files.seal_data_position(data_iter.get_state(), step)
                    saved = checkpointer.save(step, state, position, force=force)
                if saved or force:
                    recorder.saved_step(step)

            for step in range(start + 1, tcfg.num_steps + 1):
                try:
                    with recorder.timing("data"):
                        local_batch = next(data_iter)
                except StopIteration:
                    if step == 1:  # not one batch: nothing to train on, which is bad input, not a finished run
                        raise DataError("the training data gave no batch at all (every example skipped or the "
                                        "files empty: see the warnings above); nothing was trained") from None
                    log.info("the data ran out (all epochs done) before step %d; stopping", step)
                    if step - 1 > start:
                        with _host_sync():
                            _check_finite(window, checkpointer)
                            save(step - 1, state)
                    break
                with recorder.timing("data"):
                    batch = _global_batch(local_batch, batch_sharding)
                profiler.before(step)
                with profiler.annotate(step), recorder.timing("step"):
                    state, metrics = step_fn(state, batch)
                profiler.after(step, state)
                checkpointer.check_errors()  # a failed background save stops the run here, not steps later
                window = _accumulate(window, metrics, step)
                window_steps += 1
                bar.update(1)
                stop = preemption.reached(step)  # once: a signal landing later in this step is seen at the next
                watch_now = watcher is not None and watcher.due(step)
                log_now = step % tcfg.log_every == 0 or step == tcfg.num_steps or watch_now
                save_now = step % tcfg.checkpoint_every == 0 or step == tcfg.num_steps or stop
                local_save = checkpointer.due(step) and not save_now  # emergency checkpoints' host-local tier
                if not (log_now or save_now or local_save):
                    continue
                with _host_sync():  # the only host reads of the step's results: log and save steps
                    with recorder.timing("step"):  # waiting here is waiting for the device's steps
                        sums = _check_finite(window, checkpointer)
                    if log_now:
                        with recorder.timing("step"):
                            metrics = jax.device_get(metrics)
                        elapsed = time.perf_counter() - window_start
                        last = {k: float(v) for k, v in metrics.items() if np.ndim(v) == 0 and k != "num_tokens"}
                        last.update({
                            "tokens_per_s": tokens_per_step * window_steps / elapsed,
                            "mfu": flops_per_step * window_steps / elapsed / peak,
                            "mfu_causal": causal_flops_per_step * window_steps / elapsed / peak,
                        })
                        if "lang" in sums:
                            for i in range(sums["lang"].shape[1]):  # the objective's languages
                                lang = languages[i] if i < len(languages) else str(i)
                                if sums["lang"][1, i] > 0:
                                    last[f"loss/{lang}"] = float(sums["lang"][0, i] / sums["lang"][1, i])
                        if data_iter.stage is not None:  # a staged mixture says where it is
                            last["data_stage"] = float(data_iter.stage)
                        with recorder.timing("eval"):
                            heldout = watcher.evaluate(state.params) if watch_now else None
                        if heldout is not None:
                            last.update(heldout_metrics(heldout))
                        last.update(recorder.window(window_steps))
                        writer.write(step, last)
                        bar.set_postfix(loss=f"{last['loss']:.3f}", tok_s=f"{last['tokens_per_s']:.0f}")
                        window_start, window_steps, window = time.perf_counter(), 0, None
                    if save_now:
                        save(step, state)
                    elif local_save:
                        save(step, state, force=False)
                    if log_now:
                        recorder.write()
                    if watch_now:
                        def save_and_wait(step=step, state=state):
                            if not save_now:
                                save(step, state)
                            with recorder.timing("checkpoint"):
                                checkpointer.wait()

                        watcher.check(heldout, step, save_and_wait)
                    if stop:
                        with recorder.timing("checkpoint"):
                            checkpointer.wait()
                        log.warning("%s: saved step %d to %s; exiting", preemption.name, step, checkpointer.directory)
                        raise Preempted(preemption.exit_code)
    finally:
        bar.close()
        writer.close()
        checkpointer.close()
    return last


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


__all__ = ["Experiment", "NonFiniteLossError", "Preempted", "TrainState", "TrainerConfig", "param_count_and_flops", "train"]
