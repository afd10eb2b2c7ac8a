"""Projector and predictor heads (MLPs).

``mlp(in, hidden, out, layers)`` builds ``layers`` linear layers: every layer but the last is
``Linear -> [BatchNorm1d] -> ReLU``; the last is ``Linear -> [BatchNorm1d]``. The per-method
choices (BN in hidden layers, BN on the output, biases) follow the papers:

=============  ==========================================  =====================================
method         projector (in -> hidden ... -> out)          predictor
=============  ==========================================  =====================================
SimCLR         2 layers 2048 -> 128, hidden BN               --
MoCo v2        2 layers 2048 -> 128, no BN                   --
BYOL           2 layers 4096 -> 256, hidden BN               2 layers 4096 -> 256, hidden BN
SimSiam        3 layers 2048, hidden BN, BN on output        2 layers 512 bottleneck, hidden BN
DirectPred     as BYOL                                       linear, set from F (not trained)
Barlow Twins   3 layers 8192, hidden BN, no biases           --
VICReg         3 layers 8192, hidden BN                      --
UniGrad        3 layers 2048, hidden BN, no hidden biases    --
=============  ==========================================  =====================================
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

__all__ = ["HeadSpec", "mlp"]


@dataclass(frozen=True)
class HeadSpec:
    """Architecture flags of one head (the widths come from the method's options)."""

    hidden_bn: bool = True
    last_bn: bool = False
    last_bn_affine: bool = True
    hidden_bias: bool = True
    last_bias: bool = True


def mlp(in_dim: int, hidden_dim: int, out_dim: int, num_layers: int, spec: HeadSpec = HeadSpec()) -> nn.Sequential:
    """An MLP of ``num_layers`` (>= 1) linear layers; see the module docstring for the layout."""
    if num_layers < 1:
        raise ValueError("num_layers must be >= 1")
    layers: list[nn.Module] = []
    width = in_dim
    for _ in range(num_layers - 1):
        layers.append(nn.Linear(width, hidden_dim, bias=spec.hidden_bias and not spec.hidden_bn))
        if spec.hidden_bn:
            layers.append(nn.BatchNorm1d(hidden_dim))
        layers.append(nn.ReLU(inplace=True))
        width = hidden_dim
    layers.append(nn.Linear(width, out_dim, bias=spec.last_bias and not spec.last_bn))
    if spec.last_bn:
        layers.append(nn.BatchNorm1d(out_dim, affine=spec.last_bn_affine))
    return nn.Sequential(*layers)
