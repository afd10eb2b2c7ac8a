"""The training loop. It knows no particular method, only the
:class:`~siamgrad.methods.protocol.Method` protocol.

Exact resume: the order of the data in epoch ``e`` and the augmentation randomness of global
step ``s`` are drawn from generators seeded by ``(seed, e)`` and ``(seed, s)``; the model,
optimizer, probe and method state (momentum encoder, queues, F matrices) are in the checkpoint.
A run stopped and resumed therefore ends with the same weights as one that never stopped.

Several processes (``torchrun --nproc_per_node=N -m siamgrad train ...``): the process group comes
from torchrun's environment (NCCL on CUDA, gloo on CPU; process ``r`` uses ``cuda:LOCAL_RANK``).
``batch_size`` stays the global batch: process ``r`` takes its ``batch_size / N`` share of every
global batch, and the augmentation parameters of the whole global batch are drawn from the step's
generator and sliced, so every sample gets exactly the augmentation it gets in one process. The
method runs inside ``DistributedDataParallel`` (gradients averaged), the objectives gather what
they need (see :mod:`siamgrad.distributed`), ``sync_bn=true`` normalizes batch-norm layers over the
global batch, and the online probe trains on the gathered batch: N processes then compute the loss
and the update of one process with the whole batch. Rank 0 alone logs, evaluates (kNN, probe,
baselines) and writes checkpoints, metrics and the report; diagnostics run the same fixed batch on
every rank (so a collapse stop is taken by all). Checkpoints hold the unwrapped method, so a run can
resume with another number of processes.
"""

from __future__ import annotations

import dataclasses
import math
import signal
import threading
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from siamgrad import distributed as D
from siamgrad.augment.mixing import MixParams, draw_step_mix
from siamgrad.augment.multiview import build_augment
from siamgrad.config import Config, check_augment, resolve, to_dict
from siamgrad.cpu import cap_threads, default_threads, native_bf16
from siamgrad.data.seeding import step_generator
from siamgrad.data.sets import load_data, make_batches, should_stream
from siamgrad.errors import CheckpointError, ConfigError, TrainingError
from siamgrad.methods.from_config import build_method, method_options
from siamgrad.report.metrics import read_metrics
from siamgrad.train.evaluator import RunEvaluator
from siamgrad.train.metrics import MetricsLog, NullMetrics
from siamgrad.train.optim import build_optimizer, lr_factor, set_lr
from siamgrad.train.probe import OnlineProbe
from siamgrad.train.progress import Progress
from siamgrad.train.run_folder import RunFolder, say

__all__ = ["Interrupted", "StepsMismatch", "TrainResult", "Trainer", "read_metrics", "train"]

Metrics = MetricsLog | NullMetrics


@dataclasses.dataclass
class TrainResult:
    run_dir: Path
    step: int
    knn_accuracy: float | None
    random_knn_accuracy: float | None
    raw_pixel_knn_accuracy: float | None
    best_knn_accuracy: float | None
    stopped_early: bool = False

    def summary(self) -> str:
        """The three kNN figures, what each means and what the run shows (:mod:`siamgrad.report.summary`)."""
        from siamgrad.report.summary import train_summary

        return train_summary(self.run_dir, self.knn_accuracy, self.random_knn_accuracy,
                             self.raw_pixel_knn_accuracy, stopped_early=self.stopped_early, demo=True)


class Trainer:
    """Runs one configured pretraining job end to end; see :meth:`fit`."""

    def __init__(self, cfg: Config, *, log: bool = True):
        self.cfg = cfg = resolve(cfg)
        method_options(cfg)  # a bad method option fails before any data is read
        # threads unset: at most the CPUs this process may use (affinity mask, cgroup quota,
        # torchrun's OMP_NUM_THREADS), not every core of the host; the CPU augmentation takes
        # fewer when the machine is busy (siamgrad.cpu). threads=N: at most the CPUs of the mask
        threads, threads_note = cap_threads(cfg.threads) if cfg.threads else (
            min(torch.get_num_threads(), default_threads()), None)
        torch.set_num_threads(threads)
        self.device = torch.device(cfg.device)
        self.amp_dtype = torch.bfloat16 if cfg.precision == "bf16" else None
        self.dist = D.init_from_env(self.device.type)  # torchrun's environment (a no-op for one process)
        self.rank, self.world, self.is_main = self.dist.rank, self.dist.world, self.dist.main
        self.log = log and self.is_main
        if threads_note is not None:
            self._say(f"warning: {threads_note}")
        if self.amp_dtype is not None and self.device.type == "cpu" and not native_bf16():
            self._say("warning: this CPU has no native bf16 (AVX512-BF16 or AMX), so bf16 autocast is emulated "
                      "and slower than fp32; precision=bf16_if_native or fp32 is faster here")
        if self.world > 1 and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
            torch.cuda.set_device(self.device)
        torch.manual_seed(cfg.seed)  # the same initialization on every rank
        # before any data is read: a folder another process trains in is refused at once
        self.folder = RunFolder(cfg, is_main=self.is_main)
        self.run_dir = self.folder.path

        # data: in memory (moved to the device once, as uint8) or streamed from disk; streamed
        # evaluation sets are decoded on rank 0 only, which alone evaluates
        streamed = cfg.data.name == "shards" or should_stream(cfg.data)
        data = load_data(cfg.data, seed=cfg.seed, size=cfg.augment.size, eval_sets=self.is_main or not streamed)
        if data.no_eval is not None:
            self._say(f"warning: {data.no_eval}, so this run has no kNN evaluation")
        self.train_set, self.knn_train, self.knn_test = data.train, data.knn_train, data.knn_test
        self.mean, self.std, self.size = data.mean, data.std, data.image_size
        self.batches = make_batches(self.train_set, self.device, cfg.batch_size, cfg.seed, data=cfg.data,
                                    rank=self.rank, world=self.world)
        self.steps_per_epoch = len(self.batches)
        self.total_steps = cfg.epochs * self.steps_per_epoch
        check_augment(cfg, size=self.size)  # local crops against the data's own size
        self.augment = build_augment(cfg.augment.preset, self.size, cfg.augment.n_views, mean=self.mean,
                                     std=self.std, **_local_crops(cfg), **_augment_overrides(cfg))

        # model, optimizer, probe
        self.method = build_method(cfg).to(self.device)
        if cfg.channels_last:
            self.method = self.method.to(memory_format=torch.channels_last)
        if cfg.sync_bn and self.world > 1:
            self.method = D.convert_sync_batchnorm(self.method, self.device.type)
        if cfg.compile:
            self.method.backbone.compile()
        self.param_dtype = next(self.method.parameters()).dtype
        self.optimizer = build_optimizer(self.method, cfg.optim, cfg.batch_size)
        self.base_lrs = [g["lr"] for g in self.optimizer.param_groups]
        self.warmup_steps = int(round(cfg.optim.warmup_epochs * self.steps_per_epoch))
        self.probe = None
        if cfg.eval.online_probe and self.train_set.labels is not None:
            self.probe = OnlineProbe(self.method.feature_dim, len(self.train_set.classes), cfg.optim.probe_lr,
                                     self.device)
        self.evaluator = RunEvaluator(cfg, self.knn_train, self.knn_test, mean=self.mean, std=self.std,
                                      size=self.size, device=self.device, autocast_dtype=self.amp_dtype)
        self.monitor = None
        if cfg.diag.enabled:
            from siamgrad.diagnostics.monitor import TrainingMonitor

            self.monitor = TrainingMonitor(gradients=cfg.diag.gradients, patience=cfg.diag.patience,
                                           dim_rank_frac=cfg.diag.dim_rank_frac)
            self.diag_images = self.train_set.images[: min(cfg.diag.batch, len(self.train_set))].to(self.device)

        self.step = 0
        self.skipped_steps = 0  # steps skipped for a NaN/Inf loss (on_nan=skip), over the whole run
        self.train_seconds = 0.0  # wall time in training steps alone (no evaluation or saving), over the whole run
        # the model the steps call: DDP around the method when there are several processes (its
        # forward is training_step); EMA updates, state and checkpoints use the method itself
        self.model: nn.Module = D.wrap_ddp(self.method, self.device) if self.world > 1 else self.method

    def close(self) -> None:
        """End the process group if this trainer started it."""
        D.close(self.dist)

    def _say(self, msg: str) -> None:
        say(self.log, msg)

    # -- the loop

    def fit(self) -> TrainResult:
        """Train to the end (or resume and finish), holding the run folder's lock throughout: a
        second process on the same folder is refused with one line."""
        with self.folder.held(self._say):
            return self._fit()

    def _fit(self) -> TrainResult:
        cfg = self.cfg
        resumed = self._resume()
        finished = self.folder.finished_results(self._say) if resumed and self.step >= self.total_steps else None
        if finished is not None:  # a finished run: report it, change nothing
            self._say(f"run '{self.run_dir}' already finished; nothing to do")
            return self._result(finished.get("knn_accuracy"))
        metrics = self.folder.open(cfg, resumed_at=self.step if resumed else None,
                                   final=resumed and self.step >= self.total_steps)
        if not resumed:
            if self.is_main:
                self.evaluator.measure_baselines(self.method.backbone)
            metrics.write({"step": 0, "epoch": 0, **{k: v for k, v in self.evaluator.baselines.items() if v is not None}})
        procs = f", {self.world} processes" if self.world > 1 else ""
        self._say(f"run folder: {self.run_dir}  ({len(self.train_set)} images, {self.steps_per_epoch} steps/epoch, "
                  f"{self.total_steps} steps, device {self.device}{procs})")
        progress = Progress(self.total_steps, enabled=cfg.progress and self.log)
        speed = _Speed(cfg.batch_size * _online_views(cfg))  # view-images through the backbone per step
        bad_steps, stopped, interrupted, last_loss = 0, False, False, float("nan")
        signals = _StopSignals()  # Ctrl-C / SIGTERM: finish the step, save, say how to resume
        try:
            while self.step < self.total_steps and not (stopped or interrupted):
                epoch, pos = divmod(self.step, self.steps_per_epoch)
                tick = time.perf_counter()
                for images, labels in self.batches.epoch(epoch, pos):
                    loss, logs = self.train_step(images, labels)
                    self.step += 1
                    self.train_seconds += time.perf_counter() - tick
                    if not math.isfinite(loss):
                        bad_steps += 1
                        self._skip_bad_step(loss, bad_steps, metrics)
                        continue
                    bad_steps, last_loss = 0, loss
                    ips, eta = speed.update(self.total_steps - self.step)
                    progress.update(self.step, loss, ips, eta)
                    self._log_step(metrics, loss, logs, ips)
                    if cfg.diag.every and self.step % cfg.diag.every == 0:
                        self._diagnose(metrics)
                    if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                        self.save()
                    if cfg.stop_after is not None and self.step >= cfg.stop_after:
                        stopped = True
                        break
                    if signals.any(self.world, self.device):  # the same answer on every rank
                        interrupted = True
                        break
                    tick = time.perf_counter()
                else:  # the end of an epoch
                    if not cfg.diag.every:
                        self._diagnose(metrics)
                    ep = self.step // self.steps_per_epoch
                    if cfg.eval.every and ep % cfg.eval.every == 0 and self.step < self.total_steps:
                        self._evaluate(metrics, ep)
                    self.save()
                    interrupted = signals.any(self.world, self.device)
        finally:
            signals.restore()  # from here a second signal acts at once
            progress.close()
        if interrupted:
            self._stop(metrics, f"interrupted by {signals.name} after step {self.step}")
            raise Interrupted(signals.signum or signal.SIGTERM)
        if stopped:
            self._stop(metrics, f"stopped after step {self.step} (stop_after)")
            return self._result(None, stopped_early=True)
        try:
            knn_acc = self._evaluate(metrics, self.step // self.steps_per_epoch)
            self.save()
            metrics.close()
            self._finish(knn_acc, last_loss)
        except KeyboardInterrupt:  # Ctrl-C after the last step: the training is saved, its evaluation is not
            metrics.close()
            self.folder.close()
            self._say(f"training finished at step {self.step} (checkpoint {self.folder.latest}); the final "
                      f"evaluation was interrupted; finish it with: {self.folder.resume_command(self.world)}")
            raise Interrupted(signal.SIGINT) from None
        self.folder.close()
        D.barrier()  # every rank returns after rank 0 has finished the run folder
        return self._result(knn_acc)

    def _stop(self, metrics: Metrics, why: str) -> None:
        """Save, close, and print the command that resumes (every rank returns after rank 0 saved)."""
        path = self.save()
        metrics.close()
        self.folder.close()
        self._say(f"{why}; checkpoint {path}; resume with: {self.folder.resume_command(self.world)}")
        D.barrier()

    def train_step(self, images: torch.Tensor, labels: torch.Tensor | None) -> tuple[float, dict]:
        """One optimizer step of the method (and of the online probe); the global loss and logs."""
        cfg = self.cfg
        views, mix = self.views(images), self.mixing(len(images))
        if cfg.channels_last:
            views = [v.contiguous(memory_format=torch.channels_last) for v in views]
        if self.param_dtype != views[0].dtype:  # a float64 model (default dtype float64): float64 views
            views = [v.to(self.param_dtype) for v in views]
        set_lr(self.optimizer, self.base_lrs,
               lr_factor(self.step, self.total_steps, self.warmup_steps, cfg.optim.min_lr_ratio))
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                            enabled=self.amp_dtype is not None):
            # == method.training_step(views[, mix]), through DDP if wrapped
            loss, logs = self.model(views) if mix is None else self.model(views, mix)
        loss_value, logs = self._global_logs(float(loss.detach()), logs)
        if not math.isfinite(loss_value):
            return loss_value, logs
        loss.backward()
        if cfg.optim.clip_grad:
            logs["grad_norm"] = float(nn.utils.clip_grad_norm_(self.method.parameters(), cfg.optim.clip_grad))
        self.optimizer.step()
        self.method.on_step_end(self.step, self.total_steps)
        if self.probe is not None and labels is not None:
            logs.update(self.probe.step(self.method.last_features, labels, self.world))
        return loss_value, logs

    def views(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The augmented views of this process's share of the global batch of step ``self.step``.

        The parameters are drawn from a generator seeded by ``(seed, step)`` for the whole global
        batch and rank ``r`` applies its share of them (``share=(rank, world)``): the augmentation
        of every sample does not depend on the number of processes.
        """
        g = self._step_generator()
        share = (self.rank, self.world) if self.world > 1 else None
        return self.augment(images, generator=g, share=share)

    def _step_generator(self, stream: int = 0) -> torch.Generator:
        return step_generator(self.cfg.seed, self.step, stream)

    def mixing(self, local_batch: int) -> list[MixParams] | None:
        """The CutMix / Mixup draws of step ``self.step`` for the global crops (None: not mixed), from a
        generator seeded by ``(seed, step)`` apart from the augmentation's: the same on every process."""
        a = self.cfg.augment
        if a.mix == "none":
            return None
        g = self._step_generator(_MIX_STREAM)
        return draw_step_mix(a.mix, a.mix_alpha, a.mix_p, a.n_views, local_batch * self.world, self.size,
                             self.size, g)

    # -- pieces of the loop

    def _global_logs(self, loss_value: float, logs: dict) -> tuple[float, dict]:
        """Mean over processes of the loss and of every float log (one all-reduce).

        Per-rank means over equal shares average to the global-batch mean; a NaN/Inf anywhere
        makes the mean non-finite on every rank, so all ranks skip or stop together.
        """
        if self.world == 1:
            return loss_value, logs
        keys = [k for k, v in logs.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
        t = torch.tensor([loss_value, *(float(logs[k]) for k in keys)], dtype=torch.float64, device=self.device)
        vals = D.all_reduce_mean(t).tolist()
        return vals[0], {**logs, **dict(zip(keys, vals[1:]))}

    def _skip_bad_step(self, loss: float, bad_steps: int, metrics: Metrics) -> None:
        """A NaN/Inf loss (its step already counted): stop, or skip it under ``on_nan=skip``."""
        cfg, step = self.cfg, self.step - 1
        if cfg.on_nan == "stop" or bad_steps > cfg.max_bad_steps:
            raise TrainingError(f"loss is {loss} at step {step}; stopped with the last good checkpoint intact "
                                f"({self.folder.latest_or_none()}); lower optim.lr or set optim.clip_grad")
        self.skipped_steps += 1
        self._say(f"warning: loss is {loss} at step {step}; step skipped ({self.skipped_steps} skipped so far)")
        metrics.write({"step": self.step, "epoch": self.step / self.steps_per_epoch,
                       "skipped_steps": self.skipped_steps})

    def _log_step(self, metrics: Metrics, loss: float, logs: dict, ips: float) -> None:
        if self.step % self.cfg.log_every == 0 or self.step == self.total_steps:
            rec = {"step": self.step, "epoch": self.step / self.steps_per_epoch, **logs,
                   "loss": loss, "lr": self.optimizer.param_groups[0]["lr"], "images_per_s": ips,
                   "train_seconds": round(self.train_seconds, 3)}
            if self.skipped_steps:
                rec["skipped_steps"] = self.skipped_steps
            metrics.write(rec)

    def _diagnose(self, metrics: Metrics) -> None:
        """Diagnostics on a fixed batch with a fixed augmentation (comparable over time).

        With several processes every rank runs the whole fixed batch as one process would (the
        objectives' gathers off, see :func:`siamgrad.distributed.local_only`); a collapse seen on
        any rank stops all of them.
        """
        if self.monitor is None:
            return
        views = self.augment(self.diag_images, generator=torch.Generator().manual_seed(self.cfg.seed + 12_345))
        if self.cfg.channels_last:
            views = [v.contiguous(memory_format=torch.channels_last) for v in views]
        with D.local_only():
            rec = self.monitor.record(self.method, views, step=self.step)
        rec["epoch"] = self.step / self.steps_per_epoch
        metrics.write(rec)
        msg = rec.get("diag/collapse")
        if D.any_rank(bool(msg), self.device):
            msg = msg or "collapse detected on another process"
            if self.cfg.diag.collapse == "stop":
                raise TrainingError(f"{msg}; stopped with the last good checkpoint intact "
                                    f"({self.folder.latest_or_none()}); set diag.collapse=warn to continue")
            self._say(f"warning: {msg} at step {self.step}")

    def knn(self, backbone: nn.Module | None = None) -> float | None:
        """kNN top-1 (%) of ``backbone`` (default: the method's) on the run's labeled sets."""
        return self.evaluator.knn(backbone if backbone is not None else self.method.backbone)

    def _evaluate(self, metrics: Metrics, epoch: int) -> float | None:
        """kNN (and online-probe) accuracy, on rank 0 (None on the others); a new best is saved."""
        if not self.is_main:
            return None
        acc = self.knn()
        if acc is None:
            return None
        rec: dict[str, Any] = {"step": self.step, "epoch": epoch, "knn_acc": acc,
                               "train_seconds": round(self.train_seconds, 3)}
        probe = self.evaluator.probe_accuracy(self.probe)
        if probe is not None:
            rec["online_probe_acc"] = probe
        metrics.write(rec)
        if self.evaluator.record(acc):
            self.save("best.pt")
        self._say(f"epoch {epoch}: kNN {acc:.2f}%" + (f", online probe {probe:.2f}%" if probe is not None else ""))
        return acc

    def _finish(self, knn_acc: float | None, last_loss: float) -> None:
        """The end of a finished run, in stages (rank 0): evaluate with the backbone and the sets in
        memory, write results.json once, render the report once from it. The summary printed
        after is then a formatter of results.json: it reads no checkpoint and no data."""
        if not self.is_main:
            return
        b = self.evaluator.baselines
        results: dict[str, Any] = {
            "step": self.step, "knn_accuracy": knn_acc, "best_knn_accuracy": self.evaluator.best_knn,
            "random_init_knn_accuracy": b["random_knn"], "raw_pixel_knn_accuracy": b["raw_pixel_knn"],
            "final_loss": last_loss, "skipped_steps": self.skipped_steps,
            "train_seconds": round(self.train_seconds, 3),
        }
        if self.cfg.data.name == "digits" and knn_acc is not None:
            # the demo's figures (report/summary.py): few labels and the linear probe, beside the
            # same network at initialization (seeded as siamgrad eval seeds it) and raw pixels
            from siamgrad.eval.checkpoint import random_init_backbone

            random_init = random_init_backbone(self.cfg).to(self.device)
            results["eval"] = self.evaluator.protocols(self.method.backbone, random_init, self.step)
        self.folder.write_results(results, self._say)
        if self.cfg.diag.report:
            from siamgrad.report.html import analyze_run

            final = self.evaluator.test_features  # the last kNN's: the final backbone's test features
            given = None if final is None else (final, self.evaluator.knn_test.labels,
                                                 list(self.evaluator.knn_test.classes))
            try:
                self._say(f"report: {analyze_run(self.run_dir, test_features=given)}")
            except Exception as e:  # a plotting problem must not lose a finished run
                self._say(f"warning: could not write the report ({type(e).__name__}: {e})")

    def _result(self, knn_acc: float | None, stopped_early: bool = False) -> TrainResult:
        b = self.evaluator.baselines
        return TrainResult(self.run_dir, self.step, knn_acc, b["random_knn"], b["raw_pixel_knn"],
                           self.evaluator.best_knn, stopped_early=stopped_early)

    # -- checkpoints

    def state(self) -> dict:
        s = {
            "config": to_dict(self.cfg),
            "step": self.step,
            "total_steps": self.total_steps,
            "method": self.method.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "skipped_steps": self.skipped_steps,
            "train_seconds": self.train_seconds,
            **self.evaluator.state_dict(),
            "mean": list(self.mean),
            "std": list(self.std),
            "image_size": self.size,
        }
        if self.probe is not None:
            s.update(self.probe.checkpoint_entries())
        return s

    def save(self, name: str = "latest.pt") -> Path:
        """Write the checkpoint ``name`` into the run folder (rank 0 only; the path on every rank)."""
        return self.folder.save(self.state(), name)

    def load(self, state: dict) -> None:
        try:
            self.method.load_state_dict(state["method"])
            self.optimizer.load_state_dict(state["optimizer"])
            if self.probe is not None and "probe" in state:
                self.probe.load_checkpoint_entries(state)
        except (RuntimeError, KeyError, ValueError, TypeError) as e:
            first = str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__
            raise CheckpointError(
                f"the checkpoint in '{self.run_dir}' does not fit this model ({first}); resume with the "
                "config it was written with (see config.yaml there) or use another run_name"
            ) from None
        self.step = int(state["step"])
        self.skipped_steps = int(state.get("skipped_steps", 0))
        self.train_seconds = float(state.get("train_seconds", 0.0))
        self.evaluator.load_state_dict(state)

    def _resume(self) -> bool:
        """Load the run folder's latest checkpoint when there is one (and ``resume`` allows it)."""
        found = self.folder.load_latest(self.device)
        if found is not None:
            state, used, notes = found
            for note in notes:  # a fallback to the previous checkpoint, as one line from rank 0
                self._say(f"warning: {note}")
            if state.get("total_steps") != self.total_steps:
                raise StepsMismatch(self.run_dir, state.get("total_steps"), self.total_steps)
            self.load(state)
            self._say(f"resumed from {used} at step {self.step}")
        if not D.same_on_all_ranks(self.step, self.device):
            raise ConfigError(f"the processes found different checkpoints in '{self.run_dir}' (this one: step "
                              f"{self.step}); out_dir must be a folder every node sees")
        return found is not None


class StepsMismatch(ConfigError):
    """The run folder's checkpoint was made for another number of steps than this config gives."""

    def __init__(self, run_dir: Path, saved: int | None, steps: int):
        super().__init__(f"the checkpoint in '{run_dir}' was made for {saved} steps, this config gives {steps}; "
                         "resume with the same epochs/batch_size/data, or use another run_name (or delete the "
                         "run folder) to start over")
        self.run_dir, self.saved, self.steps = run_dir, saved, steps


class Interrupted(KeyboardInterrupt):
    """Training stopped by SIGINT or SIGTERM after finishing its step and writing a checkpoint (the
    command that resumes was printed). ``signum``: the signal; the CLI exits with 128 + it."""

    def __init__(self, signum: int):
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
        self.signum = signum


class _StopSignals:
    """While installed (the main thread only), the first SIGINT/SIGTERM asks the loop to stop after
    its step; a second one acts as usual (KeyboardInterrupt / termination)."""

    def __init__(self):
        self.signum: int | None = None
        self.saved: dict[int, Any] = {}
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGINT, signal.SIGTERM):
            self.saved[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        self.signum = signum
        self.restore()  # the next one is not caught

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else "a signal"

    def any(self, world: int, device: torch.device) -> bool:
        """Whether a stop was asked (on any process: all stop after the same step)."""
        if world == 1:
            return self.signum is not None
        return D.any_rank(self.signum is not None, device)

    def restore(self) -> None:
        for sig, old in self.saved.items():
            signal.signal(sig, old if old is not None else signal.SIG_DFL)
        self.saved = {}


class _Speed:
    """View-images per second and the time left, from the steps done since the loop started."""

    def __init__(self, images_per_step: int):
        self.images_per_step, self.t0, self.steps = images_per_step, time.monotonic(), 0

    def update(self, steps_left: int) -> tuple[float, float]:
        self.steps += 1
        elapsed = max(time.monotonic() - self.t0, 1e-9)
        return self.steps * self.images_per_step / elapsed, steps_left * elapsed / self.steps


_MIX_STREAM = 2**40  # offsets the mixing generator's seeds from the augmentation's


def _local_crops(cfg: Config) -> dict[str, Any]:
    a = cfg.augment
    return {"local_views": a.local_crops, "local_size": a.local_size, "local_scale": tuple(a.local_scale)}


def _online_views(cfg: Config) -> int:
    """Views through the online backbone per image: global and local crops, and the mixed copies
    (counted on every step: with ``mix_p < 1`` the images/s shown is an upper bound)."""
    a = cfg.augment
    return a.n_views + a.local_crops + (a.n_views if a.mix != "none" else 0)


def _augment_overrides(cfg: Config) -> dict[str, Any]:
    """The augment section's settings that override the recipe's own."""
    a = cfg.augment
    out: dict[str, Any] = {}
    if a.scale is not None:
        out["scale"] = tuple(a.scale)
    for k in ("blur_p", "solarize_p"):
        if getattr(a, k) is not None:
            out[k] = getattr(a, k)
    return out


def train(cfg: Config, log: bool = True) -> TrainResult:
    """Run a configured job; the Python entry point of ``siamgrad train`` (also under torchrun)."""
    trainer = Trainer(cfg, log=log)
    try:
        return trainer.fit()
    finally:
        trainer.close()
