"""The training loop. It knows no particular method: a method is anything with
``training_step(views) -> (loss, logs)`` and ``on_step_end(step, total_steps)``
(see :mod:`siamgrad.methods.registry`).

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
import json
import math
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from siamgrad import checkpoint as ckpt
from siamgrad import distributed as D
from siamgrad.augment.multiview import RaggedImages, build_augment
from siamgrad.config import Config, dump_yaml, resolve, to_dict

from siamgrad.data.datasets import ImageDataset, load_dataset
from siamgrad.methods.from_config import build_method
from siamgrad.errors import CheckpointError, ConfigError, TrainingError
from siamgrad.eval.knn import extract_features, knn_accuracy, raw_pixel_features
from siamgrad.train.optim import build_optimizer, lr_factor, set_lr
from siamgrad.data.stream import dataset_channel_stats, load_train_set, make_batches, stream_eval_sets


# --------------------------------------------------------------------------------------------
# resolving "auto" settings


def _device_autocast(cfg: Config) -> tuple[torch.device, torch.dtype | None]:
    device = torch.device(cfg.device)
    return device, (torch.bfloat16 if cfg.precision == "bf16" else None)


# --------------------------------------------------------------------------------------------
# progress and metrics


class Progress:
    """A one-line progress bar (step, loss, images/s, ETA) on stderr; periodic lines when not a TTY."""

    def __init__(self, total: int, enabled: bool = True, stream=None):
        self.total, self.enabled = total, enabled
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.last_print = 0.0
        self.every = max(1, total // 20)

    def update(self, step: int, loss: float, ips: float, eta_s: float, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        frac = step / max(1, self.total)
        eta = time.strftime("%H:%M:%S", time.gmtime(max(0.0, eta_s)))
        text = (f"step {step}/{self.total} [{'#' * int(frac * 20):<20}] loss {loss:.4f} "
                f"{ips:,.0f} img/s ETA {eta}")
        if self.tty:
            if force or now - self.last_print > 0.2:
                self.stream.write("\r" + text + " " * 4)
                self.stream.flush()
                self.last_print = now
        elif force or step % self.every == 0:
            self.stream.write(text + "\n")
            self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.tty:
            self.stream.write("\n")
            self.stream.flush()


class MetricsLog:
    """Metrics as JSON lines (``metrics.jsonl``) and, when available, TensorBoard scalars."""

    def __init__(self, run_dir: Path, tensorboard: bool = True):
        self.path = run_dir / "metrics.jsonl"
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(run_dir / "tb"))
            except Exception:  # tensorboard not installed: JSON lines only
                self.tb = None

    def write(self, record: dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            step = record.get("step", 0)
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                    self.tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


class _NoMetrics:
    """The metrics sink of ranks other than 0: writes nothing."""

    def write(self, record: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


def _trim_metrics(run_dir: Path, step: int) -> None:
    """Drop the records after ``step`` (written after the checkpoint a resumed run starts from)."""
    p = run_dir / "metrics.jsonl"
    if not p.is_file():
        return
    keep = [r for r in read_metrics(run_dir) if not isinstance(r.get("step"), (int, float)) or r["step"] <= step]
    ckpt.atomic_write_text(p, "".join(json.dumps(r) + "\n" for r in keep))


def read_metrics(run_dir: str | Path) -> list[dict]:
    """Records of ``metrics.jsonl`` (a torn last line from a crash is ignored)."""
    out = []
    p = Path(run_dir) / "metrics.jsonl"
    if not p.is_file():
        return out
    for line in p.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


# --------------------------------------------------------------------------------------------
# the trainer


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
        def pct(x):
            return "n/a" if x is None else f"{x:.2f}%"

        return (f"kNN top-1: trained {pct(self.knn_accuracy)} | random-init {pct(self.random_knn_accuracy)}"
                f" | raw pixels {pct(self.raw_pixel_knn_accuracy)}  (run: {self.run_dir})")


class Trainer:
    """Runs one configured pretraining job end to end; see :meth:`fit`."""

    def __init__(self, cfg: Config, *, log: bool = True):
        self.cfg = resolve(cfg)
        self.log = log
        cfg = self.cfg
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.device, self.amp_dtype = _device_autocast(cfg)
        # several processes: torchrun's environment (a no-op for one process)
        self.dist = D.init_from_env(self.device.type)
        self.rank, self.world, self.is_main = self.dist.rank, self.dist.world, self.dist.main
        self.log = log and self.is_main
        if self.world > 1 and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
            torch.cuda.set_device(self.device)
        torch.manual_seed(cfg.seed)  # the same initialization on every rank

        # data: the whole training set moves to the device once, as uint8; or, for image folders
        # too large for memory and tar shards, it is streamed from disk (siamgrad.data.stream)
        d = cfg.data
        self.train_set = load_train_set(d, cfg.seed)
        self.knn_train, self.knn_test = self._eval_sets()
        self.mean, self.std = dataset_channel_stats(self.train_set)
        self.size = cfg.augment.size or self.train_set.image_size
        self.batches = make_batches(self.train_set, self.device, cfg.batch_size, cfg.seed, data=d,
                                    rank=self.rank, world=self.world)
        self.steps_per_epoch = len(self.batches)
        has_labels = self.train_set.labels is not None
        self.total_steps = cfg.epochs * self.steps_per_epoch

        overrides = {}
        if cfg.augment.scale is not None:
            overrides["scale"] = tuple(cfg.augment.scale)
        for k in ("blur_p", "solarize_p"):
            if getattr(cfg.augment, k) is not None:
                overrides[k] = getattr(cfg.augment, k)
        self.augment = build_augment(cfg.augment.preset, self.size, cfg.augment.n_views,
                                     mean=self.mean, std=self.std, **overrides)

        # model, probe, optimizers
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
        self.num_classes = len(self.train_set.classes) if has_labels else 0
        self.probe = None
        if cfg.eval.online_probe and has_labels:
            dim = self._feature_dim()
            self.probe = nn.Linear(dim, self.num_classes).to(self.device)
            self.probe_opt = torch.optim.SGD(self.probe.parameters(), lr=cfg.optim.probe_lr, momentum=0.9)

        self.monitor = None
        if cfg.diag.enabled:
            from siamgrad.diagnostics.monitor import TrainingMonitor

            self.monitor = TrainingMonitor(gradients=cfg.diag.gradients, patience=cfg.diag.patience,
                                           dim_rank_frac=cfg.diag.dim_rank_frac)
            n = min(cfg.diag.batch, len(self.train_set))
            self.diag_images = self.train_set.images[:n].to(self.device)

        self.step = 0
        self.skipped_steps = 0  # steps skipped for a NaN/Inf loss (on_nan=skip), over the whole run
        self.best_knn: float | None = None
        self.baselines: dict[str, float | None] = {"random_knn": None, "raw_pixel_knn": None}
        self.run_dir = self._run_dir()
        # the model the steps call: DDP around the method when there are several processes (its
        # forward is training_step); EMA updates, state and checkpoints use the method itself
        self.model: nn.Module = D.wrap_ddp(self.method, self.device) if self.world > 1 else self.method

    def close(self) -> None:
        """End the process group if this trainer started it."""
        D.close(self.dist)

    # -- setup helpers

    def _eval_sets(self) -> tuple[ImageDataset | None, ImageDataset | None]:
        d = self.cfg.data
        if d.name == "shards" or not isinstance(self.train_set, ImageDataset):
            # streamed data: bounded in-memory labeled subsets at the training size, on rank 0
            if not self.is_main:
                return None, None
            return stream_eval_sets(d, self.train_set, self.cfg.augment.size or self.train_set.image_size,
                                    seed=self.cfg.seed)
        labeled_train = self.train_set if self.train_set.labels is not None else None
        if labeled_train is None:
            try:
                labeled_train = load_dataset(d.name, d.root, "train", image_size=d.image_size)
            except Exception:
                labeled_train = None
        try:
            test = load_dataset(d.name, d.root, d.test_split, image_size=d.image_size)
        except Exception:
            test = None
        if labeled_train is None or test is None or test.labels is None:
            return None, None
        return labeled_train, test

    @torch.no_grad()
    def _feature_dim(self) -> int:
        was = self.method.training
        self.method.eval()
        x = torch.zeros(2, 3, self.size, self.size, device=self.device)
        dim = self.method.backbone(x).shape[1]
        self.method.train(was)
        return dim

    def _run_dir(self) -> Path:
        cfg = self.cfg
        name = cfg.run_name or f"{cfg.method.get('name')}-{cfg.data.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        run_dir = Path(cfg.out_dir).expanduser() / name
        latest = run_dir / "latest.pt"
        if cfg.resume is True and not (latest.exists() or ckpt.previous_path(latest).exists()):
            raise ConfigError(f"resume=true but '{run_dir}' holds no checkpoint; check run_name/out_dir")
        if cfg.resume is False and latest.exists():
            raise ConfigError(
                f"run folder '{run_dir}' already holds a checkpoint; use resume=true or another run_name"
            )
        return run_dir

    # -- evaluation

    def knn(self, backbone: nn.Module | None = None) -> float | None:
        if self.knn_train is None:
            return None
        backbone = backbone if backbone is not None else self.method.backbone
        kw = dict(size=self.size, device=self.device, channels_last=bool(self.cfg.channels_last),
                  autocast_dtype=self.amp_dtype)
        ftr = extract_features(backbone, self.knn_train.images, self.mean, self.std, **kw)
        fte = extract_features(backbone, self.knn_test.images, self.mean, self.std, **kw)
        self._last_eval_features = (ftr, fte)
        return knn_accuracy(ftr, self.knn_train.labels, fte, self.knn_test.labels,
                            k=self.cfg.eval.knn_k, temperature=self.cfg.eval.knn_t,
                            num_classes=len(self.knn_train.classes))

    def _probe_accuracy(self) -> float | None:
        if self.probe is None or self.knn_test is None or not hasattr(self, "_last_eval_features"):
            return None
        with torch.no_grad():
            logits = self.probe(self._last_eval_features[1].to(self.device))
            return 100.0 * (logits.argmax(1).cpu() == self.knn_test.labels).float().mean().item()

    def _baselines(self) -> None:
        if self.knn_train is None or not self.is_main:
            return
        e = self.cfg.eval
        raw = lambda ds: raw_pixel_features(ds.images, self.mean, self.std)  # noqa: E731
        self.baselines["raw_pixel_knn"] = knn_accuracy(
            raw(self.knn_train), self.knn_train.labels, raw(self.knn_test), self.knn_test.labels,
            k=e.knn_k, temperature=e.knn_t, num_classes=len(self.knn_train.classes))
        if e.random_baseline:
            # the weights at step 0 are the random initialization of this very run
            self.baselines["random_knn"] = self.knn()

    # -- checkpoints

    def state(self) -> dict:
        s = {
            "config": to_dict(self.cfg),
            "step": self.step,
            "total_steps": self.total_steps,
            "method": self.method.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "best_knn": self.best_knn,
            "skipped_steps": self.skipped_steps,
            "baselines": dict(self.baselines),
            "mean": list(self.mean),
            "std": list(self.std),
            "image_size": self.size,
        }
        if self.probe is not None:
            s["probe"] = self.probe.state_dict()
            s["probe_optimizer"] = self.probe_opt.state_dict()
        return s

    def save(self, name: str = "latest.pt") -> Path:
        """Write the checkpoint ``name`` into the run folder (rank 0 only; the path on every rank)."""
        path = self.run_dir / name
        if self.is_main:
            ckpt.save_checkpoint(self.state(), path, keep_previous=(name == "latest.pt"))
        return path

    def load(self, state: dict) -> None:
        try:
            self.method.load_state_dict(state["method"])
            self.optimizer.load_state_dict(state["optimizer"])
            if self.probe is not None and "probe" in state:
                self.probe.load_state_dict(state["probe"])
                self.probe_opt.load_state_dict(state["probe_optimizer"])
        except (RuntimeError, KeyError, ValueError, TypeError) as e:
            first = str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__
            raise CheckpointError(
                f"the checkpoint in '{self.run_dir}' does not fit this model ({first}); resume with the "
                "config it was written with (see config.yaml there) or use another run_name"
            ) from None
        self.step = int(state["step"])
        self.skipped_steps = int(state.get("skipped_steps", 0))
        self.best_knn = state.get("best_knn")
        self.baselines.update(state.get("baselines") or {})

    def _maybe_resume(self) -> bool:
        latest = self.run_dir / "latest.pt"
        if self.cfg.resume is False or not (latest.exists() or ckpt.previous_path(latest).exists()):
            return False
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            state, used = ckpt.load_with_fallback(latest, map_location=self.device)
        for w in caught:  # the fallback, as one line from rank 0
            self._say(f"warning: {w.message}")
        if state.get("total_steps") != self.total_steps:
            raise ConfigError(
                f"the checkpoint in '{self.run_dir}' was made for {state.get('total_steps')} steps, this "
                f"config gives {self.total_steps}; resume with the same epochs/batch_size/data"
            )
        self.load(state)
        self._say(f"resumed from {used} at step {self.step}")
        return True

    # -- the loop

    def _say(self, msg: str) -> None:
        if self.log:
            print(msg, file=sys.stderr, flush=True)

    def views(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The augmented views of this process's share of the global batch of step ``self.step``.

        The parameters are drawn from a generator seeded by ``(seed, step)`` for the whole global
        batch (``batch_size`` samples) and rank ``r`` applies samples ``r n .. (r + 1) n - 1`` of
        them to its ``n = batch_size / world`` images: the augmentation of every sample does not
        depend on the number of processes.
        """
        g = torch.Generator().manual_seed(self.cfg.seed * 7_919 + self.step + 1)
        if self.world == 1:
            return self.augment(images, generator=g)
        if isinstance(images, RaggedImages):  # streamed batch: the same slicing, per-image sizes
            return self.augment(images, generator=g, share=(self.rank, self.world))
        n, _, h, w = images.shape
        params = self.augment.sample_params(n * self.world, h, w, g, images.device)
        lo = self.rank * n
        return self.augment.apply_params(images, [p.slice(lo, lo + n) for p in params])

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

    def train_step(self, images: torch.Tensor, labels: torch.Tensor | None) -> tuple[float, dict]:
        cfg = self.cfg
        views = self.views(images)
        if cfg.channels_last:
            views = [v.contiguous(memory_format=torch.channels_last) for v in views]
        if self.param_dtype != views[0].dtype:  # a float64 model (default dtype float64): float64 views
            views = [v.to(self.param_dtype) for v in views]
        set_lr(self.optimizer, self.base_lrs,
               lr_factor(self.step, self.total_steps, self.warmup_steps, cfg.optim.min_lr_ratio))
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                            enabled=self.amp_dtype is not None):
            loss, logs = self.model(views)  # == method.training_step(views), through DDP if wrapped
        loss_value, logs = self._global_logs(float(loss.detach()), logs)
        if not math.isfinite(loss_value):
            return loss_value, logs
        loss.backward()
        if cfg.optim.clip_grad:
            logs["grad_norm"] = float(nn.utils.clip_grad_norm_(self.method.parameters(), cfg.optim.clip_grad))
        self.optimizer.step()
        self.method.on_step_end(self.step, self.total_steps)
        if self.probe is not None and labels is not None:
            feats = self.method.last_features.detach().to(self.probe.weight.dtype)
            if self.world > 1:  # the probe learns from the whole global batch, the same on every rank
                feats, labels = D.all_gather(feats), D.all_gather(labels)
            logits = self.probe(feats)
            probe_loss = F.cross_entropy(logits, labels)
            self.probe_opt.zero_grad(set_to_none=True)
            probe_loss.backward()
            self.probe_opt.step()
            logs["probe_loss"] = float(probe_loss.detach())
            logs["probe_batch_acc"] = 100.0 * float((logits.argmax(1) == labels).float().mean())
        return loss_value, logs

    def fit(self) -> TrainResult:
        cfg = self.cfg
        resumed = self._maybe_resume()
        if not D.same_on_all_ranks(self.step, self.device):
            raise ConfigError(f"the processes found different checkpoints in '{self.run_dir}' (this one: step "
                              f"{self.step}); out_dir must be a folder every node sees")
        done = self.run_dir / "results.json"
        if resumed and self.step >= self.total_steps and done.is_file():
            r = json.loads(done.read_text())  # a finished run: report it, change nothing
            self._say(f"run '{self.run_dir}' already finished; nothing to do")
            return TrainResult(self.run_dir, self.step, r.get("knn_accuracy"), r.get("random_init_knn_accuracy"),
                               r.get("raw_pixel_knn_accuracy"), r.get("best_knn_accuracy"))
        metrics: MetricsLog | _NoMetrics = _NoMetrics()
        if self.is_main:  # rank 0 writes the run folder
            self.run_dir.mkdir(parents=True, exist_ok=True)
            ckpt.atomic_write_text(self.run_dir / "config.yaml", dump_yaml(cfg))
            if resumed:
                _trim_metrics(self.run_dir, self.step)
            metrics = MetricsLog(self.run_dir)
        if not resumed:
            self._baselines()
            metrics.write({"step": 0, "epoch": 0, **{k: v for k, v in self.baselines.items() if v is not None}})
        procs = f", {self.world} processes" if self.world > 1 else ""
        self._say(f"run folder: {self.run_dir}  ({len(self.train_set)} images, {self.steps_per_epoch} steps/epoch, "
                  f"{self.total_steps} steps, device {self.device}{procs})")
        progress = Progress(self.total_steps, enabled=cfg.progress and self.log)
        bad_steps, stopped = 0, False
        t0, steps_done, last_loss, knn_acc = time.monotonic(), 0, float("nan"), None
        view_images = cfg.batch_size * cfg.augment.n_views  # images through the backbone per step
        try:
            while self.step < self.total_steps:
                epoch, pos = divmod(self.step, self.steps_per_epoch)
                for images, labels in self.batches.epoch(epoch, pos):
                    loss, logs = self.train_step(images, labels)
                    if not math.isfinite(loss):
                        bad_steps += 1
                        where = self.run_dir / "latest.pt"
                        last = where if where.exists() else "none yet"
                        if cfg.on_nan == "stop" or bad_steps > cfg.max_bad_steps:
                            raise TrainingError(
                                f"loss is {loss} at step {self.step}; stopped with the last good checkpoint "
                                f"intact ({last}); lower optim.lr or set optim.clip_grad"
                            )
                        self.skipped_steps += 1
                        self._say(f"warning: loss is {loss} at step {self.step}; step skipped "
                                  f"({self.skipped_steps} skipped so far)")
                        metrics.write({"step": self.step + 1, "epoch": (self.step + 1) / self.steps_per_epoch,
                                       "skipped_steps": self.skipped_steps})
                        self.step += 1
                        continue
                    bad_steps = 0
                    self.step += 1
                    last_loss = loss
                    steps_done += 1
                    elapsed = time.monotonic() - t0
                    ips = steps_done * view_images / max(elapsed, 1e-9)
                    eta = (self.total_steps - self.step) * elapsed / steps_done
                    progress.update(self.step, loss, ips, eta)
                    if self.step % cfg.log_every == 0 or self.step == self.total_steps:
                        rec = {"step": self.step, "epoch": self.step / self.steps_per_epoch, **logs,
                               "loss": loss, "lr": self.optimizer.param_groups[0]["lr"], "images_per_s": ips}
                        if self.skipped_steps:
                            rec["skipped_steps"] = self.skipped_steps
                        metrics.write(rec)
                    if cfg.diag.every and self.step % cfg.diag.every == 0:
                        self._diagnose(metrics)
                    if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                        self.save()
                    if cfg.stop_after is not None and self.step >= cfg.stop_after:
                        stopped = True
                        break
                if stopped:
                    break
                # end of an epoch
                if not cfg.diag.every:
                    self._diagnose(metrics)
                ep = self.step // self.steps_per_epoch
                if cfg.eval.every and ep % cfg.eval.every == 0 and self.step < self.total_steps:
                    knn_acc = self._evaluate(metrics, ep)
                self.save()
        finally:
            progress.close()
        if stopped:
            self.save()
            metrics.close()
            self._say(f"stopped after step {self.step} (stop_after); resume with resume=true run_name={self.run_dir.name}")
            D.barrier()  # every rank returns after rank 0 has written the checkpoint
            return TrainResult(self.run_dir, self.step, None, self.baselines["random_knn"],
                               self.baselines["raw_pixel_knn"], self.best_knn, stopped_early=True)
        knn_acc = self._evaluate(metrics, self.step // self.steps_per_epoch)
        self.save()
        metrics.close()
        if cfg.diag.report and self.is_main:
            from siamgrad.report.html import analyze_run

            try:
                report = analyze_run(self.run_dir)
                self._say(f"report: {report}")
            except Exception as e:  # a plotting problem must not lose a finished run
                self._say(f"warning: could not write the report ({type(e).__name__}: {e})")
        result = TrainResult(self.run_dir, self.step, knn_acc, self.baselines["random_knn"],
                             self.baselines["raw_pixel_knn"], self.best_knn)
        if self.is_main:
            ckpt.atomic_write_json(self.run_dir / "results.json", {
                "step": self.step, "knn_accuracy": knn_acc, "best_knn_accuracy": self.best_knn,
                "random_init_knn_accuracy": self.baselines["random_knn"],
                "raw_pixel_knn_accuracy": self.baselines["raw_pixel_knn"], "final_loss": last_loss,
                "skipped_steps": self.skipped_steps,
            })
        D.barrier()  # every rank returns after rank 0 has finished the run folder
        return result

    def _diagnose(self, metrics: MetricsLog | _NoMetrics) -> None:
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
                where = self.run_dir / "latest.pt"
                raise TrainingError(
                    f"{msg}; stopped with the last good checkpoint intact "
                    f"({where if where.exists() else 'none yet'}); set diag.collapse=warn to continue"
                )
            self._say(f"warning: {msg} at step {self.step}")

    def _evaluate(self, metrics: MetricsLog | _NoMetrics, epoch: int) -> float | None:
        """kNN (and online-probe) accuracy, on rank 0 (None on the others)."""
        if not self.is_main:
            return None
        acc = self.knn()
        if acc is None:
            return None
        rec: dict[str, Any] = {"step": self.step, "epoch": epoch, "knn_acc": acc}
        probe = self._probe_accuracy()
        if probe is not None:
            rec["online_probe_acc"] = probe
        metrics.write(rec)
        if self.best_knn is None or acc > self.best_knn:
            self.best_knn = acc
            self.save("best.pt")
        self._say(f"epoch {epoch}: kNN {acc:.2f}%" + (f", online probe {probe:.2f}%" if probe is not None else ""))
        return acc


def train(cfg: Config, log: bool = True) -> TrainResult:
    """Run a configured job; the Python entry point of ``siamgrad train`` (also under torchrun)."""
    trainer = Trainer(cfg, log=log)
    try:
        return trainer.fit()
    finally:
        trainer.close()
