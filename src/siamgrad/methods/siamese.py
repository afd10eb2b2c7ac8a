"""The generic Siamese method: backbone, projector, optional predictor, target branch and objective.

Every registered method is this one class around its :class:`~siamgrad.methods.spec.MethodSpec`;
it implements :class:`~siamgrad.methods.protocol.Method`.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from siamgrad import distributed as D
from siamgrad.core.gradient import float32, l2n, ordered_pairs, upcast
from siamgrad.errors import ConfigError, SiamgradError
from siamgrad.methods.options import MOMENTUM_TARGETS
from siamgrad.methods.protocol import Branches, MethodState
from siamgrad.models.heads import HeadSpec, mlp
from siamgrad.models.shuffle import KeyShuffle, shuffle, unshuffle
from siamgrad.models.view_norm import view_groups

if TYPE_CHECKING:
    from siamgrad.methods.spec import MethodSpec


def head_spec(base: HeadSpec, options: dict[str, Any], prefix: str) -> HeadSpec:
    """``base`` (a spec's projector or predictor) with the options ``{prefix}_last_bn`` etc. applied."""
    flags = {}
    for flag in ("hidden_bn", "hidden_bn_affine", "last_bn", "last_bias"):
        if f"{prefix}_{flag}" in options:
            flags[flag] = bool(options[f"{prefix}_{flag}"])
    return dataclasses.replace(base, **flags)


class SiameseMethod(nn.Module):
    """Backbone + projector (+ predictor) + target branch + objective of one registered method.

    ``training_step(views)`` returns ``(loss, logs)``; ``on_step_end(step, total_steps)`` updates the
    momentum encoder (``m = 1 - (1 - m0)(cos(pi step/T) + 1)/2``, or ``m0`` with
    ``momentum_schedule=constant``; ``theta_m <- m theta_m + (1 - m) theta``, buffers copied) and the
    method's state. All state needed to resume (momentum encoder, queue and pointer, F / F_hat and
    their counters, the DirectPred predictor, the key shuffle's counter) lives in submodules/buffers.

    The M views go through every network in one forward; with ``view_bn=per_view`` (the default)
    each batch-norm layer normalizes each view's slice with that view's statistics
    (:mod:`siamgrad.models.view_norm`), as separate forwards of the views would. With
    ``shuffle_bn`` (MoCo) the key encoder forwards a shuffled batch (:mod:`siamgrad.models.shuffle`).
    """

    def __init__(self, spec: MethodSpec, backbone: nn.Module, feature_dim: int, options: dict[str, Any]) -> None:
        super().__init__()
        self.spec = spec
        self.name = spec.name
        self.feature_dim = int(feature_dim)
        self.options = dict(options)
        self.params = {**self.options, **spec.derived(self.options)}
        self.form: str = options["form"]
        self.target: str = options["target"]
        o = self.options
        self.backbone = backbone
        self.projector = mlp(feature_dim, o["proj_hidden_dim"], o["proj_output_dim"], o["proj_layers"],
                             self._head(spec.projector, "proj"))
        self.predictor: nn.Module | None = None
        if spec.predictor is not None and self.form == "original":
            dim = o["proj_output_dim"]
            layers = o.get("pred_layers", 2)
            if layers > 0:
                self.predictor = mlp(dim, o["pred_hidden_dim"], dim, layers, self._head(spec.predictor, "pred"))
        self.momentum_backbone: nn.Module | None = None
        self.momentum_projector: nn.Module | None = None
        if self.target in MOMENTUM_TARGETS:
            self.momentum_backbone = copy.deepcopy(backbone).requires_grad_(False)
            self.momentum_projector = copy.deepcopy(self.projector).requires_grad_(False)
        self.state: MethodState | None = spec.make_state(self.params, o["proj_output_dim"], self.form)
        self.key_shuffle: KeyShuffle | None = None
        if o.get("shuffle_bn", False) and self.target in MOMENTUM_TARGETS:
            self.key_shuffle = KeyShuffle()
        self.view_bn: str = o.get("view_bn", "joint")
        self.last_features: Tensor | None = None
        self.last_momentum: float = float(o["momentum"])

    def _head(self, base: HeadSpec, prefix: str) -> HeadSpec:
        return head_spec(base, self.options, prefix)

    def extra_repr(self) -> str:
        return f"method={self.name}, form={self.form}, target={self.target}"

    # -- training

    def _check_views(self, views: Any) -> None:
        """One-line errors for inputs the backbone would reject deep inside torch."""
        if not isinstance(views, (list, tuple)) or len(views) < 2 or not all(isinstance(v, Tensor) for v in views):
            raise SiamgradError("training_step needs a list of at least 2 view batches (tensors [N, C, H, W])")
        shapes = {tuple(v.shape) for v in views}
        if len(shapes) != 1:
            raise SiamgradError(f"all views must have the same shape; got {sorted(shapes)}")
        v = views[0]
        if v.dim() != 4:
            raise SiamgradError(f"views must be image batches [N, C, H, W]; got shape {tuple(v.shape)}")
        if v.shape[0] < 2:
            raise SiamgradError("a batch needs at least 2 images per view for batch statistics")
        if len({t.dtype for t in views}) != 1 or len({t.device for t in views}) != 1:
            raise SiamgradError("all views must have the same dtype and device")
        if not v.is_floating_point():
            raise SiamgradError(
                f"views must be float tensors (augmented, normalized images), got {v.dtype}; pass uint8 "
                "images through siamgrad.augment.multiview first (e.g. build_augment('cifar', 32)(images))"
            )
        in_channels = next((m.in_channels for m in self.backbone.modules() if isinstance(m, nn.Conv2d)), None)
        if in_channels is not None and v.shape[1] != in_channels:
            raise SiamgradError(f"views have {v.shape[1]} channels but the backbone takes {in_channels}; "
                                f"got shape {tuple(v.shape)}")
        p = next(self.parameters(), None)
        if p is not None:
            if v.device != p.device:
                raise SiamgradError(f"views are on {v.device} but the model is on {p.device}; move one of them")
            if v.dtype != p.dtype and not torch.is_autocast_enabled(v.device.type):
                raise SiamgradError(f"views are {v.dtype} but the model is {p.dtype}; convert the views "
                                    f"(views = [v.to({p.dtype}) for v in views])")

    def _features(self, x: Tensor) -> Tensor:
        y = self.backbone(x)
        if y.ndim != 2 or y.shape[1] != self.feature_dim:
            raise ConfigError(
                f"the backbone returned features of shape {tuple(y.shape)} but feature_dim={self.feature_dim}; "
                "pass the backbone's output width as feature_dim"
            )
        return y

    def _per_view(self, module: nn.Module, m: int) -> contextlib.AbstractContextManager:
        """Each of the ``m`` views' own batch-norm statistics inside (``view_bn=per_view``)."""
        return view_groups(module, m) if self.view_bn == "per_view" else contextlib.nullcontext()

    @torch.no_grad()
    def _keys(self, x: Tensor, m: int) -> Tensor:
        """The momentum branch's outputs for the stacked views ``x`` (shuffled batch norm for MoCo)."""
        assert self.momentum_backbone is not None and self.momentum_projector is not None
        encoder = nn.Sequential(self.momentum_backbone, self.momentum_projector)
        if self.key_shuffle is None:
            with self._per_view(encoder, m):
                return encoder(x)
        perm = self.key_shuffle.permutation(x.shape[0] * D.world_size(), x.device)
        with self._per_view(encoder, m):
            return unshuffle(encoder(shuffle(x, perm)), perm)

    def branches(self, views: list[Tensor]) -> Branches:
        """One forward over all views (each view's batch-norm statistics its own with
        ``view_bn=per_view``); the target branch as chosen by ``target``."""
        n, m = views[0].shape[0], len(views)
        x = torch.cat(list(views), dim=0)
        online_nets = [self.backbone, self.projector, *([self.predictor] if self.predictor is not None else [])]
        with self._per_view(nn.ModuleList(online_nets), m):
            y = self._features(x)
            z = self.projector(y)
            p = self.predictor(z) if self.predictor is not None else None
        self.last_features = y[:n].detach()
        zm = self._keys(x, m) if self.target in MOMENTUM_TARGETS else None
        online = list(upcast(z).split(n))
        predicted = list(upcast(p).split(n)) if p is not None else online
        if self.target == "none":
            positive = negative = online
        elif self.target == "stopgrad":
            positive = negative = [t.detach() for t in online]
        else:
            assert zm is not None
            positive = list(upcast(zm).split(n))
            negative = positive if self.target == "momentum" else [t.detach() for t in online]
        return Branches(online=online, predicted=predicted, positive=positive, negative=negative)

    def training_step(self, views: list[Tensor]) -> tuple[Tensor, dict[str, float]]:
        """Loss (graph attached) and float logs for a list of M >= 2 augmented batches [N, 3, H, W]."""
        self._check_views(views)
        b = self.branches(views)
        with float32(views[0].device):
            loss, logs = self.spec.evaluate(self.form, b, self.params, self.state)
            with torch.no_grad():
                pairs = ordered_pairs(len(b.online))
                pos_sim = torch.stack(
                    [(l2n(b.online[a].detach()) * l2n(b.positive[c].detach())).sum(1).mean() for a, c in pairs]
                ).mean()
        logs = {"loss": loss.detach(), **logs, "pos_sim": pos_sim}
        device = loss.device
        values = [torch.as_tensor(v).detach().to(device=device, dtype=torch.float32).reshape(()) for v in logs.values()]
        out = dict(zip(logs, torch.stack(values).tolist()))  # one host-device sync for all logs
        if self.target in MOMENTUM_TARGETS:
            out["momentum"] = self.last_momentum
        return loss, out

    def state_diagnostics(self) -> dict[str, Tensor]:
        """The state's tensors for diagnostics (``F``, ``predictor``, ``queue``; empty when none)."""
        return self.state.diagnostics() if self.state is not None else {}

    def forward(self, views: list[Tensor]) -> tuple[Tensor, dict[str, float]]:
        """Same as :meth:`training_step` (so DistributedDataParallel's hooks see a forward call)."""
        return self.training_step(views)

    def momentum_at(self, step: int, total_steps: int) -> float:
        """``m = 1 - (1 - m0) (cos(pi step / total_steps) + 1) / 2`` (``m0`` when ``total_steps <= 0`` or
        with ``momentum_schedule=constant``)."""
        m0 = float(self.options["momentum"])
        if total_steps <= 0 or self.options.get("momentum_schedule", "cosine") == "constant":
            return m0
        return 1.0 - (1.0 - m0) * (math.cos(math.pi * min(step, total_steps) / total_steps) + 1.0) / 2.0

    @torch.no_grad()
    def on_step_end(self, step: int, total_steps: int) -> None:
        """After ``optimizer.step()``: EMA update of the momentum encoder, queue bookkeeping."""
        if self.momentum_backbone is not None and self.momentum_projector is not None:
            m = self.momentum_at(step, total_steps)
            for online, target in ((self.backbone, self.momentum_backbone), (self.projector, self.momentum_projector)):
                src = [p.detach() for p in online.parameters()]
                dst = [p.detach() for p in target.parameters()]
                if dst:
                    torch._foreach_mul_(dst, m)
                    torch._foreach_add_(dst, src, alpha=1.0 - m)
                for bs, bd in zip(online.buffers(), target.buffers()):
                    bd.copy_(bs)
            self.last_momentum = m
        if self.state is not None:
            self.state.on_step_end()
        if self.key_shuffle is not None:
            self.key_shuffle.advance()
