"""The generic Siamese method: backbone, projector, optional predictor, target branch and objective.

Every registered method is this one class around its :class:`~siamgrad.methods.spec.MethodSpec`;
it implements :class:`~siamgrad.methods.protocol.Method`.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import math
from typing import TYPE_CHECKING, Any, Sequence

import torch
from torch import Tensor, nn

from siamgrad import distributed as D
from siamgrad.augment.mixing import MixParams, mix_images, partner_rows
from siamgrad.core.gradient import float32, l2n, upcast, view_pairs
from siamgrad.errors import ConfigError, SiamgradError
from siamgrad.methods.options import MOMENTUM_TARGETS
from siamgrad.methods.protocol import Branches, MethodState, MixedView
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

    Multi-crop: the views are G >= 2 global crops of one size, then local crops of smaller sizes;
    each group of equal-size views is one forward (per-view statistics inside it). Targets come
    from the global crops only, paired as :func:`siamgrad.core.gradient.view_pairs`. With
    ``local_predictor`` (BYOL, SimSiam) the local crops go through a predictor of their own.
    ``mix`` (CutMix / Mixup draws, :mod:`siamgrad.augment.mixing`) adds a mixed copy of each of the
    first ``len(mix)`` global crops as an online view of its own (its own forward); see
    :class:`~siamgrad.methods.protocol.Branches` for how its targets are weighted.
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
        # built last: the other modules' initialization does not depend on this option
        self.local_predictor: nn.Module | None = None
        if self.predictor is not None and o.get("local_predictor", False):
            self.local_predictor = mlp(dim, o["pred_hidden_dim"], dim, layers, self._head(spec.predictor, "pred"))

    def _head(self, base: HeadSpec, prefix: str) -> HeadSpec:
        return head_spec(base, self.options, prefix)

    def extra_repr(self) -> str:
        return f"method={self.name}, form={self.form}, target={self.target}"

    # -- training

    def _check_views(self, views: Any, mix: Any = None) -> None:
        """One-line errors for inputs the backbone would reject deep inside torch."""
        if not isinstance(views, (list, tuple)) or len(views) < 2 or not all(isinstance(v, Tensor) for v in views):
            raise SiamgradError("training_step needs a list of at least 2 view batches (tensors [N, C, H, W])")
        v = views[0]
        if v.dim() != 4 or any(t.dim() != 4 for t in views):
            raise SiamgradError(f"views must be image batches [N, C, H, W]; got shape {tuple(v.shape)}")
        if len({tuple(t.shape[:2]) for t in views}) != 1:
            raise SiamgradError(f"all views must have the same batch size and channels; got "
                                f"{sorted({tuple(t.shape) for t in views})}")
        groups = size_groups(views)
        if len(groups[0]) < 2:
            raise SiamgradError("the first two views must be global crops of the same size (local crops follow them)")
        side = v.shape[2] * v.shape[3]
        if any(g[0].shape[2] * g[0].shape[3] >= side for g in groups[1:]):
            raise SiamgradError(f"views after the global crops must be smaller local crops; got shapes "
                                f"{[tuple(g[0].shape) for g in groups]} (global crops first, all of one size)")
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
        if mix:
            if not all(isinstance(m, MixParams) for m in mix) or len(mix) > len(groups[0]):
                raise SiamgradError(f"mix must be a list of at most {len(groups[0])} MixParams (one per global "
                                    "crop to mix; siamgrad.augment.mixing.draw_mix)")
            if any(m.perm.shape[0] != v.shape[0] * D.world_size() for m in mix):
                raise SiamgradError("mix: each draw's permutation must cover the whole (global) batch")

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

    def _forward(self, views: Sequence[Tensor], predictor: nn.Module | None) -> tuple[Tensor, Tensor, Tensor | None]:
        """Backbone features, projections and predictions of equal-size ``views`` in one forward
        (each view's batch-norm statistics its own with ``view_bn=per_view``)."""
        x = torch.cat(list(views), dim=0)
        nets = [self.backbone, self.projector, *([predictor] if predictor is not None else [])]
        with self._per_view(nn.ModuleList(nets), len(views)):
            y = self._features(x)
            z = self.projector(y)
            p = predictor(z) if predictor is not None else None
        return y, z, p

    def _online(self, views: Sequence[Tensor], predictor: nn.Module | None
                ) -> tuple[Tensor, list[Tensor], list[Tensor]]:
        """Backbone features, then per-view projections and predictions (a list of its own) of ``views``."""
        n = views[0].shape[0]
        y, z, p = self._forward(views, predictor)
        online = list(upcast(z).split(n))
        return y, online, list(upcast(p).split(n)) if p is not None else list(online)

    def _targets(self, online: list[Tensor], zm: Tensor | None) -> tuple[list[Tensor], list[Tensor]]:
        """``(positive, negative)`` of the global crops' ``online`` features (new lists: ``online`` grows)."""
        if self.target == "none":
            positive = negative = list(online)
        elif self.target == "stopgrad":
            positive = negative = [t.detach() for t in online]
        else:
            assert zm is not None
            positive = list(upcast(zm).split(online[0].shape[0]))
            negative = positive if self.target == "momentum" else [t.detach() for t in online]
        return positive, negative

    def branches(self, views: list[Tensor], mix: Sequence[MixParams] | None = None) -> Branches:
        """One forward per size group (the global crops, then each size of local crops, then the mixed
        copies of the global crops); the target branch, from the global crops, as chosen by ``target``."""
        groups = size_groups(views)
        globals_, n = groups[0], views[0].shape[0]
        y, online, predicted = self._online(globals_, self.predictor)
        self.last_features = y[:n].detach()
        zm = self._keys(torch.cat(list(globals_), dim=0), len(globals_)) if self.target in MOMENTUM_TARGETS else None
        positive, negative = self._targets(online, zm)
        local_head = self.local_predictor if self.local_predictor is not None else self.predictor
        extra = [(group, local_head) for group in groups[1:]]
        if mix:
            extra.append(([mix_images(globals_[k], m) for k, m in enumerate(mix)], self.predictor))
        for group, head in extra:
            _, more, more_predicted = self._online(group, head)
            online += more
            predicted += more_predicted
        n_local = sum(len(g) for g in groups[1:])
        first_mixed = len(globals_) + n_local
        mixed = {first_mixed + k: MixedView(m.ratio, functools.partial(partner_rows, perm=m.perm))
                 for k, m in enumerate(mix or [])}
        return Branches(online=online, predicted=predicted, positive=positive, negative=negative,
                        pairs=view_pairs(len(globals_), n_local, len(mixed)), mixed=mixed)

    def training_step(self, views: list[Tensor], mix: Sequence[MixParams] | None = None
                      ) -> tuple[Tensor, dict[str, float]]:
        """Loss (graph attached) and float logs for augmented batches [N, 3, H, W]: G >= 2 global crops,
        then any local crops; ``mix``: CutMix / Mixup draws for the first ``len(mix)`` global crops."""
        self._check_views(views, mix)
        b = self.branches(views, mix)
        with float32(views[0].device):
            loss, logs = self.spec.evaluate(self.form, b, self.params, self.state)
            with torch.no_grad():
                assert b.pairs is not None
                pos_sim = torch.stack(
                    [(l2n(b.online[a].detach()) * l2n(b.positive[c].detach())).sum(1).mean()
                     for a, c in b.pairs if a not in b.mixed]
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

    def forward(self, views: list[Tensor], mix: Sequence[MixParams] | None = None) -> tuple[Tensor, dict[str, float]]:
        """Same as :meth:`training_step` (so DistributedDataParallel's hooks see a forward call)."""
        return self.training_step(views) if mix is None else self.training_step(views, mix)

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


def size_groups(views: Sequence[Tensor]) -> list[list[Tensor]]:
    """``views`` split into runs of consecutive views of equal shape (one forward each)."""
    groups: list[list[Tensor]] = []
    for v in views:
        if groups and groups[-1][0].shape == v.shape:
            groups[-1].append(v)
        else:
            groups.append([v])
    return groups
