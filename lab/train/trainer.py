"""The trainer: a pure, jitted training step (its batch in microbatches), `log_every` steps per
dispatch (lax.scan), seeds as a leading axis (vmap or a loop), seeds and microbatches spread over the
available devices (shard_map), progress measures on the probe set at the end of every chunk, and
host-side callbacks between chunks. Read top to bottom: build -> init_state -> fit.
"""
from __future__ import annotations

import logging
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from lab.clamps.clamp_set import Clamps
from lab.core import (ConfigError, Interrupted, TrainingDiverged, clear_stop_requests, failure_reason, request_stop,
                      set_stop_phase, stop_requests)
from lab.measures import llc
from lab.measures.composition import composition_scores
from lab.model import Model
from lab.rundir import records_to_arrays
from lab.train import llc_chains
from lab.train.callbacks import AutoHeads
from lab.train.programs import ProgramCache
from lab.train.restore import load_run
from lab.train.runtime import batch_axis_mode, cache_sized_microbatch, fast_compiling_threefry, largest_divisor
from lab.train.state import build, init_state, seed_range

# Signals that stop a run cleanly (after the chunk, with a checkpoint). SIGUSR2 is what submitit asks SLURM
# to send before a time limit or on pre-emption; lab.app.cli hands it on to submitit, which requeues the job.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM) + ((signal.SIGUSR2,) if hasattr(signal, "SIGUSR2") else ())


log = logging.getLogger(__name__)

PER_STEP = ("train_loss", "grad_norm")   # returned by the scan per step, logged as chunk means
NOT_RECORDED = ("attention", "trajectory_outputs", "llc_samples")   # arrays for callbacks, not metrics.jsonl


def auto_microbatch(cfg, task, model) -> int:
    """On CPU, the largest divisor of the batch whose attention arrays (sequences x heads x T^2
    floats) fit in 256 KiB, a quarter of one core's L2 cache here: past that, the passes over them
    run from slower memory shared by the cores. Measured for batch 64 x 64 tokens, 4 heads, on 2 cores
    with one device per core (benchmarks/bench.py --compare-microbatch 2 4 8 16): microbatches of 16, 54-55
    steps/s; of 8, 60; of 4, 63-64; of 2, 64 (one pass of 64: 43). On accelerators, the whole batch."""
    return cache_sized_microbatch(cfg.train.batch_size, task, model)


class Trainer:
    def __init__(self, cfg, callbacks: Optional[list] = None, programs: Optional[ProgramCache] = None):
        """`programs`: where compiled programs are loaded from and saved (lab-train's; None: compile them)."""
        fast_compiling_threefry()   # before anything is lowered; the same random bits
        self.task, self.model, self.optimizer, self.schedule = build(cfg)
        self.cfg = cfg
        self.programs = programs
        self.seeds = seed_range(cfg.train)
        self._probe, self._probe_lock = None, threading.Lock()
        self.microbatch = cfg.train.microbatch or auto_microbatch(cfg, self.task, self.model)
        self.mesh = self.device_mesh()
        self.callbacks = list(callbacks or [])
        # site -> Intervention, shared by all seeds; a traced argument, so changing values never recompiles
        self.interventions: dict = {}
        self.clamps = Clamps(cfg.get("clamps"), self.model, self.task, cfg.train, lambda: self.probe, cfg.measures.enabled,
                             load_run=_clamp_source)
        # the clamps' traced arrays (windows, strengths, head masks), one row per seed; callbacks may
        # replace them between chunks (e.g. heads chosen mid-run) without recompiling
        self.clamp_args = jax.tree.map(jnp.asarray, self.clamps.init_args(len(self.seeds)))
        self._own_callbacks = [AutoHeads()] if self.clamps.auto else []
        if self.clamps.auto:
            self._check_auto_measures()
        # the local learning coefficient, estimated online every measures.llc.every steps (0: never)
        self.llc = llc.Settings.from_config(cfg.measures.llc) if cfg.measures.enabled and cfg.measures.llc.every else None
        self._llc_fn = None
        self.step = 0
        self.state = None
        # False from a chunk's dispatch until its record is logged: the chunk donated the old state's
        # buffers, so until then no state matches the step and the records (lab/train/callbacks.py,
        # Checkpointer.on_end, then saves nothing)
        self.state_logged = True
        self.records: list[dict] = []
        self.status = "running"
        self._chunk_fns: dict[int, callable] = {}
        self._measure_fn = None
        self._programs_reported = False
        self._t0 = time.perf_counter()
        if programs is not None:
            self._prepare_programs()
        else:
            self._make_probe()

    @property
    def probe(self):
        """The task's probe batch (`_make_probe`)."""
        return self._make_probe()

    def _make_probe(self):
        """The probe, made once: at the end of __init__, or first by a thread tracing the first chunk
        (clamps that run a pass on the probe). It is made on a thread of its own, where nothing is being
        traced: a batch of its own program even then, a constant of the chunk's, not a part of it."""
        with self._probe_lock:
            if self._probe is None:
                with ThreadPoolExecutor(1, thread_name_prefix="lab-probe") as pool:
                    self._probe = pool.submit(self.task.probe, self._compiled).result()
            return self._probe

    # ---- pure functions (one seed; vmapped over seeds) ----
    def loss_fn(self, params, batch, clamp_args, interventions, t, batch_offset=0):
        logits, _ = self.clamps.forward(params, batch, clamp_args, t, "train", extra=interventions,
                                        batch_offset=batch_offset)
        return self.task.loss(logits, batch)

    def loss_and_grad(self, params, batch, clamp_args, interventions, t):
        """The batch's loss and gradient, computed in microbatches of `self.microbatch` sequences whose
        gradients are averaged: the same update up to float rounding (every task's loss is a mean over
        equally weighted sequences), but on CPU small microbatches that stay in cache run faster
        (`auto_microbatch`). With several devices on the mesh's "batch" axis, each device takes
        its share of the microbatches (all sample the same batch) and the sums are added across them."""
        value_and_grad = jax.value_and_grad(self.loss_fn)
        B, mb = self.cfg.train.batch_size, self.microbatch
        if mb >= B:
            return value_and_grad(params, batch, clamp_args, interventions, t)
        n_parts, n_dev = B // mb, self.batch_devices
        parts = jax.tree.map(lambda x: x.reshape(n_parts, mb, *x.shape[1:]), batch)
        offsets = jnp.arange(0, B, mb)
        if n_dev > 1:   # this device's microbatches
            share, i = n_parts // n_dev, jax.lax.axis_index("batch")
            parts, offsets = jax.tree.map(lambda x: jax.lax.dynamic_slice_in_dim(x, i * share, share), (parts, offsets))

        def accumulate(total, part_and_offset):
            part, offset = part_and_offset
            loss, grads = value_and_grad(params, part, clamp_args, interventions, t, offset)
            return jax.tree.map(jnp.add, total, (loss, grads)), None

        zero = (jnp.zeros(()), jax.tree.map(jnp.zeros_like, params))
        total, _ = jax.lax.scan(accumulate, zero, (parts, offsets))
        if n_dev > 1:
            total = jax.lax.psum(total, "batch")
        return jax.tree.map(lambda x: x / n_parts, total)

    def train_step(self, state: dict, clamp_args: dict, interventions: dict, t):
        """One update; t is the number of updates before this one (the clamps' step)."""
        key, k_batch = jax.random.split(state["key"])
        batch = self.task.sample(k_batch, self.cfg.train.batch_size)
        loss, grads = self.loss_and_grad(state["params"], batch, clamp_args, interventions, t)
        updates, opt_state = self.optimizer.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        gnorm = optax.tree.norm(grads)
        if self.cfg.train.on_nonfinite == "skip":   # keep the old parameters and optimiser state
            ok = jnp.isfinite(loss) & jnp.isfinite(gnorm)
            keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)
            params, opt_state = keep(params, state["params"]), keep(opt_state, state["opt_state"])
        return {"params": params, "opt_state": opt_state, "key": key}, (loss, gnorm)

    def measures(self, params, clamp_args: dict, t, split: bool = False) -> dict:
        """Measures on the probe at step t, with the eval clamps applied; plus, for each
        `apply: measure` clamp, the probe loss under that clamp alone (Singh et al.'s clamped loss); clamps that share a
        `group` are applied together and logged under the group's name.
        `split`: traced inside a chunk on a mesh whose "batch" axis has several devices, which then
        share the probe's forward passes (`split_over_batch_devices`)."""
        if not self.cfg.measures.enabled:
            return {}

        def whole(batch, names, offset, mode, only=None):
            return self.clamps.forward(params, batch, clamp_args, t, mode, only, cache_names=names, batch_offset=offset)

        shared = split_over_batch_devices(whole, self.batch_devices) if split else whole

        def clamped(batch, names, offset, mode, only=None):   # resampling mixes the sequences of a batch
            return (whole if self.clamps.mixes_sequences(mode, only) else shared)(batch, names, offset, mode, only)

        forward = lambda batch, names: clamped(batch, names, 0, "eval")
        out = self.probe_scores(self.model, params, snapshot=self.cfg.measures.attention_snapshots, forward=forward)
        task = self.task
        if self.cfg.measures.outputs:   # essential dynamics: the outputs on a fixed slice of the probe
            part = jax.tree.map(lambda x: x[:self.cfg.measures.outputs], self.probe)
            out["trajectory_outputs"] = task.trajectory_outputs(whole(part, (), 0, "eval")[0], part)
        for name in self.clamps.measure_groups():
            logits, _ = clamped(self.probe, (), 0, "measure", name)
            loss, acc = task.main_scores(logits, self.probe)
            out[f"{task.main_metric}_clamped_{name}"], out[f"{task.main_accuracy}_clamped_{name}"] = loss, acc
        return out

    def _check_auto_measures(self) -> None:
        """`heads: auto` ranks heads by a per-head measure (`auto_measure`): a name that is not one is
        refused now, by tracing the measures' shapes (no compile), not at the switch step mid-run."""
        params = jax.eval_shape(self.init_state)["params"]
        shapes = jax.eval_shape(jax.vmap(lambda p: self.probe_scores(self.model, p)), params)
        per_head = sorted(k for k, v in shapes.items() if v.shape[1:] == (self.model.n_layers, self.model.n_heads))
        for name, info in self.clamps.auto.items():
            if info["measure"] not in per_head:
                raise ConfigError(f"clamps.{name}.auto_measure={info['measure']!r} is not a per-head measure of "
                                  f"task {self.cfg.task.name}; choose one of {', '.join(per_head)}")

    def probe_scores(self, model, params, snapshot: bool = False, forward=None) -> dict:
        """Every measure on the probe of any model of this task (this run's, or a clamp's source
        run); `forward(batch, cache_names)` replaces its plain forward pass (e.g. with clamps)."""
        forward = forward or (lambda batch, names: model.apply(params, batch, cache_names=names))
        # composition scores read only the weights, so every task logs them alike
        return {**self.task.measures(model, params, self.probe, forward, self.cfg.measures, snapshot),
                **composition_scores(params, model.n_layers)}

    def chunk(self, per_seed: tuple, shared: tuple, n_steps: int):
        (state, clamp_args), (interventions, step0) = per_seed, shared
        step = lambda s, i: self.train_step(s, clamp_args, interventions, step0 + i)
        state, (losses, gnorms) = jax.lax.scan(step, state, jnp.arange(n_steps))
        return state, {"train_loss": losses, "grad_norm": gnorms}

    # ---- the local learning coefficient ----
    def llc_due(self, before: int, after: int) -> bool:
        """Whether the log step `after` (the previous one: `before`) gets an LLC estimate: step 0,
        the first log step at or after each multiple of `every`, and the last step."""
        if self.llc is None:
            return False
        every = self.cfg.measures.llc.every
        return after == 0 or after // every > before // every or after == self.cfg.train.steps

    def estimate_llc(self) -> dict:
        """The LLC of every seed's current parameters under its training loss (clamps of this step
        included), all seeds' chains in one program (lab/train/llc_chains.py)."""
        s = self.llc
        if self._llc_fn is None:
            def loss(p, batch, clamp_args, shared):
                interventions, t = shared
                return self.task.loss(self.clamps.forward(p, batch, clamp_args, t, "train", extra=interventions)[0], batch)
            draw = lambda k: self.task.sample(k, s.batch_size)
            self._llc_fn = llc_chains.program(loss, draw, s, len(self.seeds) * s.chains,
                                              llc_chains.parts_for(self.task, self.model, s.batch_size),
                                              self.seed_axis_mode())
        args = jax.device_get(self.clamp_args)
        out = llc_chains.run(self._llc_fn, self.state["params"], args, self.seeds, [self.step], s,
                             (self.interventions, jnp.int32(self.step)))
        out = {k: v[0] for k, v in out.items()}   # the one step
        for i, seed in enumerate(self.seeds):
            d = {k: out[k][i] for k in ("llc", "not_settled")}
            for w in llc.warnings_for(d, int((~out["finite"][i]).sum()), s.chains):
                log.warning("LLC at step %d, seed %d: %s", self.step, seed, w)
        return {"llc": out["llc"], "llc_std": out["llc_std"], "llc_samples": out}

    def seed_axis_mode(self) -> str:
        """vmap or map (train.seed_axis; auto: map on CPU, vmap on accelerators)."""
        return batch_axis_mode(self.cfg.train.seed_axis)

    # ---- compiled programs ----
    def over_seeds(self, fn):
        """Lift a one-seed function of (per-seed x, shared y) to the leading seed axis. vmap batches
        the seeds' matmuls (best on accelerators); on CPU, where batched small matmuls run slower
        than the same matmuls one after another, `lax.map` loops over seeds inside the program."""
        if self.seed_axis_mode() == "vmap":
            return jax.vmap(fn, in_axes=(0, None))
        return lambda xs, shared: jax.lax.map(lambda x: fn(x, shared), xs)

    def device_mesh(self) -> Optional[Mesh]:
        """The devices a chunk runs on, as a ("seeds", "batch") mesh: the seeds are spread over as
        many devices as divide their number, then each seed's microbatches over as many of the rest
        as divide theirs. Several devices exist on a multi-GPU node, or on CPU, where lab-train makes
        one XLA device per core (lab/train/runtime.py). Every device computes what one device would, so results
        do not depend on the device count (beyond float rounding). None when there is one device to use."""
        devices = jax.devices()
        n_seeds = largest_divisor(len(self.seeds), len(devices))
        n_batch = largest_divisor(self.cfg.train.batch_size // self.microbatch, len(devices) // n_seeds)
        if n_seeds * n_batch == 1:
            return None
        return Mesh(np.array(devices[:n_seeds * n_batch]).reshape(n_seeds, n_batch), ("seeds", "batch"))

    @property
    def batch_devices(self) -> int:
        """Devices that share each seed's batch (the mesh's "batch" axis)."""
        return self.mesh.shape["batch"] if self.mesh is not None else 1

    def chunk_fn(self, n_steps: int):
        """(state[S], clamp_args[S], (interventions, step0)) -> (state[S], outputs[S]); one compile
        per chunk length. The state's buffers are donated; the clamp arrays are not."""
        if n_steps not in self._chunk_fns:
            fn = self.over_seeds(partial(self.chunk, n_steps=n_steps))
            mesh = self.mesh
            if mesh is not None:   # check_vma=False: scan carries start device-invariant (zeros)
                fn = jax.shard_map(fn, mesh=mesh, in_specs=(P("seeds"), P()), out_specs=P("seeds"), check_vma=False)
            jitted = self._compiled(f"chunk{n_steps}",
                                    jax.jit(lambda state, args, shared: fn((state, args), shared), donate_argnums=0))
            self._chunk_fns[n_steps] = jitted if mesh is None else self._placed(jitted, mesh)
        return self._chunk_fns[n_steps]

    def measure_fn(self):
        """(params[S], clamp_args[S], step) -> the measures of every seed (`measures`). One program for
        step 0 and the end of every chunk, apart from the chunk's: a chunk with its measures inside took
        as long to compile as the two apart, and step 0 needed the measures compiled once more."""
        if self._measure_fn is None:
            fn = self.over_seeds(lambda xs, t: self.measures(*xs, t, self.batch_devices > 1))
            mesh = self.mesh
            if mesh is not None:
                fn = jax.shard_map(fn, mesh=mesh, in_specs=(P("seeds"), P()), out_specs=P("seeds"), check_vma=False)
            jitted = self._compiled("measures", jax.jit(lambda params, args, t: fn((params, args), t)))
            self._measure_fn = jitted if mesh is None else self._placed(jitted, mesh)
        return self._measure_fn

    @staticmethod
    def _placed(jitted, mesh: Mesh):
        """`jitted`, first moving its per-seed arguments onto the mesh: a restored checkpoint or new
        clamp arrays live on one device."""
        def run(state, args, shared):
            state, args = jax.device_put((state, args), NamedSharding(mesh, P("seeds")))
            return jitted(state, args, shared)
        run._cache_size = jitted._cache_size   # compile count, for tests
        if hasattr(jitted, "prepare"):
            run.prepare = jitted.prepare
        return run

    def _compiled(self, name: str, jitted):
        """`jitted`, or its program through the program cache (lab/train/programs.py) when there is one."""
        return jitted if self.programs is None else self.programs.compiled(name, jitted)

    def init_state(self) -> dict:
        return init_state(self.model, self.optimizer, self.seeds, self._compiled)

    # ---- the loop ----
    @contextmanager
    def _deferred_interrupts(self):
        """Ctrl-C / SIGTERM / SIGUSR2 (submitit's pre-emption and time-limit signal on SLURM) stop the run
        between chunks, never inside one: the chunk donates the old state's buffers, and a signal raised
        inside a checkpoint write or an XLA callback would tear the write or be swallowed. The handler only
        counts (`lab.core.request_stop`); the loop stops after the chunk, where the step, the state and
        the records agree, and the checkpoint written then holds exactly the state after its step. A
        second signal also skips the plots; a third exits at once (the newest checkpoint on disk is whole:
        orbax renames a finished write into place). Signals received before `fit` (during start-up and
        compilation, see lab.app.cli) count too, so the run stops before its first chunk."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        if signal.getsignal(signal.SIGINT) is not request_stop:   # not lab-train's start-up (lab.app.cli):
            clear_stop_requests()                                  # a notebook's earlier Ctrl-C is spent
        previous = {s: signal.signal(s, request_stop) for s in STOP_SIGNALS}
        try:
            yield
        finally:
            for s, h in previous.items():
                signal.signal(s, h)

    @property
    def stop_signal(self) -> Optional[int]:
        """The first stop signal received, if any (lab.core.stop_requests)."""
        pending = stop_requests()
        return pending[0] if pending else None

    def fit(self) -> "Trainer":
        set_stop_phase("training")
        with self._deferred_interrupts():
            return self._fit()

    def _fit(self) -> "Trainer":
        if self.state is None:
            self.state = self.init_state()
        logged = self.step
        try:
            for cb in self.all_callbacks:
                cb.on_start(self)
            first = None
            if self.step == 0 and self.cfg.measures.enabled and self.stop_signal is None:
                if self.cfg.train.steps > 0:
                    first = self._first_chunk_in_background()
                out = jax.device_get(self.measure_fn()(self.state["params"], self.clamp_args, jnp.int32(0)))
                if self.llc_due(0, 0):
                    out.update(self.estimate_llc())
                self._log(0, out)
            while self.step < self.cfg.train.steps:
                if self.stop_signal is not None:
                    raise Interrupted(self.stop_signal)
                n = min(self.cfg.train.log_every, self.cfg.train.steps - self.step)
                shared = (self.interventions, jnp.int32(self.step))
                logged, self.state_logged = self.step, False
                # the old state's buffers are donated: until the chunk's outputs are on the host and its
                # record is logged, no state matches a step (Checkpointer.on_end then saves nothing)
                done, first = first.result(self) if first is not None else None, None
                state, out = done or self.chunk_fn(n)(self.state, self.clamp_args, shared)
                if self.cfg.measures.enabled:
                    out = {**out, **self.measure_fn()(state["params"], self.clamp_args, jnp.int32(self.step + n))}
                out = self.fetch(out)
                self._check_finite(out, n)
                self.state, self.step = state, self.step + n   # together: a checkpoint's label is its content
                if self.llc_due(logged, self.step):
                    out.update(self.estimate_llc())
                self._log(self.step, out)
                self.state_logged = True
                if self.programs is not None and not self._programs_reported:
                    log.info("%s", self.programs.report())
                    self._programs_reported = True
            if self.stop_signal is not None:   # asked to stop during the last chunk: it finished anyway
                log.info("the stop signal came during the last chunk; the run is complete")
            self.status = "completed"
        except KeyboardInterrupt:
            self.status = (f"interrupted at step {self.step}" if self.state_logged else
                           f"interrupted after step {logged} by a second signal during the next chunk")
            raise
        except Exception as e:
            if not self.status.startswith("failed"):
                self.status = f"failed at step {self.step}: {failure_reason(e)}"
            raise
        finally:
            for cb in self.all_callbacks:
                cb.on_end(self)
        return self

    def _prepare_programs(self) -> None:
        """lab-train's start-up: the first chunk's program is loaded or compiled on a thread, from the shapes
        of its arguments, and the probe's on another, while this thread makes the init's and then the
        measures' (XLA compiles without the GIL). The chunk's takes the longest to compile, and needs the
        init's output. Measured on 2 cores with an empty cache, the first chunk was logged later when this
        thread made the measures' program before the init's, or when a third thread made it."""
        sharding = {} if self.mesh is None else {"sharding": NamedSharding(self.mesh, P("seeds"))}
        state, args = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, weak_type=x.weak_type, **sharding),
                                   (jax.eval_shape(self.init_state), self.clamp_args))
        if self.cfg.train.steps > 0:
            self.chunk_fn(min(self.cfg.train.log_every, self.cfg.train.steps)).prepare(
                state, args, (self.interventions, jax.ShapeDtypeStruct((), jnp.int32)))
        threading.Thread(target=self._make_probe_early, name="lab-probe", daemon=True).start()

    def _make_probe_early(self) -> None:
        try:
            self._make_probe()
        except Exception:   # made again, and raised, where the probe is first used
            pass

    def _first_chunk_in_background(self) -> "_FirstChunk":
        """The first chunk, compiled and run on a thread while the step-0 measures compile in this one:
        two programs compile side by side, a core each (XLA compiles without the GIL)."""
        return _FirstChunk(self, min(self.cfg.train.log_every, self.cfg.train.steps))

    @staticmethod
    def fetch(out: dict) -> dict:
        """A chunk's outputs on the host: where the loop waits for the chunk to finish."""
        return jax.device_get(out)

    def _check_finite(self, out: dict, n: int) -> None:
        """Stop at a non-finite loss or gradient (train.on_nonfinite=stop); with skip, those updates
        were dropped inside the step, and only a chunk in which every update was dropped stops."""
        bad = ~(np.isfinite(out["train_loss"]) & np.isfinite(out["grad_norm"]))   # (seeds, steps)
        if self.cfg.train.on_nonfinite == "skip":
            out["skipped_updates"] = bad.sum(axis=1)
        if not bad.any():
            return
        seed_i, step_i = np.argwhere(bad)[0]
        what = "loss" if not np.isfinite(out["train_loss"][seed_i, step_i]) else "gradient"
        where = f"step {self.step + step_i + 1} (seed {self.seeds[seed_i]})"
        if self.cfg.train.on_nonfinite == "stop":
            self.status = f"failed: non-finite training {what} at {where}"
            raise TrainingDiverged(self.status + "; lower optim.lr, set optim.grad_clip, "
                                                 "or train.on_nonfinite=skip to drop such updates")
        stuck = bad.all(axis=1)
        if stuck.any():
            self.status = (f"failed: every update of steps {self.step + 1}-{self.step + n} was non-finite "
                           f"(seed {self.seeds[int(np.argmax(stuck))]}); the run cannot recover")
            raise TrainingDiverged(self.status + "; lower optim.lr or set optim.grad_clip")

    def _log(self, step: int, out: dict) -> None:
        record = {"step": step, "time": round(time.perf_counter() - self._t0, 3),
                  "lr": float(self.schedule(max(step - 1, 0)))}
        for k, v in out.items():
            if k in NOT_RECORDED:
                continue
            v = np.asarray(v)
            if k in PER_STEP:   # chunk means over the finite steps (skipped updates are counted apart)
                v = np.where(np.isfinite(v), v, 0).sum(1) / np.maximum(np.isfinite(v).sum(1), 1)
            record[k] = v.tolist()
        self.records.append(record)
        for cb in self.all_callbacks:
            cb.on_log(self, record, out)

    @property
    def all_callbacks(self) -> list:
        """The trainer's own callbacks (choosing clamp heads) first, then the user's."""
        return self._own_callbacks + self.callbacks

    # ---- results ----
    def metrics(self) -> dict[str, np.ndarray]:
        return records_to_arrays(self.records)


class _FirstChunk:
    """A run's first chunk on a thread, from a copy of the state (so the step-0 measures read the state
    itself, and nothing is lost if the result is dropped). `result(trainer)` waits for it and returns
    (state, outputs), raising its exception here; or None if the step-0 callbacks changed the clamp
    arrays or the interventions the chunk ran with: the loop then runs the chunk again with them."""

    def __init__(self, trainer, n_steps: int):
        self.inputs = (trainer.clamp_args, trainer.interventions)
        self.leaves = jax.tree.leaves(self.inputs)
        self.tree = jax.tree.structure(self.inputs)
        # a copy through the host (copying on the device compiles a program per array shape), placed as the
        # state is: an array left to the program (not committed) stays so, or the program would not match
        state = jax.tree.map(lambda h, x: jax.device_put(h, x.sharding if x.committed else None),
                             jax.device_get(trainer.state), trainer.state)
        fn = trainer.chunk_fn(n_steps)
        args = (state, trainer.clamp_args, (trainer.interventions, jnp.int32(0)))
        self._value, self._error = None, None
        self._thread = threading.Thread(target=self._run, args=(fn, args), name="lab-first-chunk", daemon=True)
        self._thread.start()

    def _run(self, fn, args) -> None:
        try:
            self._value = fn(*args)
        except BaseException as e:   # raised again in the main thread by result()
            self._error = e

    def result(self, trainer):
        self._thread.join()
        if self._error is not None:
            raise self._error
        now = (trainer.clamp_args, trainer.interventions)
        same = jax.tree.structure(now) == self.tree and all(a is b for a, b in zip(jax.tree.leaves(now), self.leaves))
        return self._value if same else None


def split_over_batch_devices(forward, n_devices: int):
    """`forward(batch, names, batch_offset, *args) -> (logits, cache)`, each device on the mesh's
    "batch" axis running it on its 1/n of the batch (with that share's offset, for clamps' batch
    masks) and the shares gathered back: otherwise every device would repeat the whole pass on its
    copy of the parameters. Outputs shaped as for the whole batch are gathered; outputs that do not
    depend on the batch size (e.g. `pos_embed`) are returned as they are."""
    def split(batch, names, batch_offset, *args):
        B = jax.tree.leaves(batch)[0].shape[0]
        if B % n_devices:
            return forward(batch, names, batch_offset, *args)
        share = B // n_devices
        offset = jax.lax.axis_index("batch") * share
        local = jax.tree.map(lambda x: jax.lax.dynamic_slice_in_dim(x, offset, share), batch)
        whole = jax.eval_shape(lambda: forward(batch, names, batch_offset, *args))
        gather = lambda x, w: jax.lax.all_gather(x, "batch", axis=0, tiled=True) if x.shape != w.shape else x
        return jax.tree.map(gather, forward(local, names, batch_offset + offset, *args), whole)
    return split


def _clamp_source(run_dir, step):
    """(task, model, params) of a run a clamp grafts from or chooses heads by."""
    run = load_run(run_dir, step)
    return run.task, run.model, run.params


@dataclass
class RunResult:
    """What `lab.run(cfg)` returns: the trained parameters (leading seed axis), metrics and summary."""
    cfg: object
    trainer: Trainer
    summary: dict
    run_dir: Optional[Path] = None
    metrics: dict = field(default_factory=dict)

    @property
    def model(self) -> Model:
        return self.trainer.model

    @property
    def params(self) -> dict:
        return self.trainer.state["params"]

    def seed_params(self, i: int = 0) -> dict:
        """Parameters of the i-th seed of this run (index, not seed value)."""
        return jax.tree.map(lambda x: x[i], self.params)

    def run_with_cache(self, tokens=None, names=("*",), seed_index: int = 0, interventions=None):
        """Named activations of one seed's model, on `tokens` (default: the probe batch)."""
        tokens = self.trainer.probe if tokens is None else tokens
        return self.model.run_with_cache(self.seed_params(seed_index), tokens, names, interventions)

