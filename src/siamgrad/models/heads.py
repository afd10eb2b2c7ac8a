"""Projector and predictor heads (MLPs).

``mlp(in, hidden, out, layers)`` builds ``layers`` linear layers: every layer but the last is
``Linear -> [BatchNorm1d] -> ReLU``; the last is ``Linear -> [BatchNorm1d]``. A linear layer
followed by batch norm has no bias (the normalization removes it). The per-method choices follow
the official code of each method (file by file in docs/methods.md, "Differences from the
reference implementations"); each flag can be changed by a method option (``proj_hidden_bn``,
``proj_hidden_bn_affine``, ``proj_last_bn``, ``proj_last_bias``, ``pred_hidden_bn_affine``,
``pred_last_bias``):

=============  ==================================================  ================================
method         projector (in -> hidden ... -> out)                  predictor
=============  ==================================================  ================================
SimCLR         2 layers 2048 -> 128, hidden BN, output BN with a    --
               scale and no shift, no output bias
MoCo v2        2 layers 2048 -> 128, no BN                          --
BYOL           2 layers 4096 -> 256, hidden BN, no output bias      2 layers 4096 -> 256, hidden BN,
                                                                    no output bias
SimSiam        3 layers 2048, hidden BN, BN on output (no affine)   2 layers 512 bottleneck, hidden BN
DirectPred     2 layers 4096 -> 256, hidden BN without affine       linear, from F_hat (DirectPredictor)
Barlow Twins   3 layers 8192, hidden BN, no biases                  --
VICReg         3 layers 8192, hidden BN, no output bias             --
UniGrad        3 layers 2048, hidden BN, no hidden biases           --
=============  ==================================================  ================================
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

__all__ = ["HeadSpec", "mlp"]


@dataclass(frozen=True)
class HeadSpec:
    """Architecture flags of one head (the widths come from the method's options)."""

    hidden_bn: bool = True
    hidden_bn_affine: bool = True  # False: hidden batch norms without weight and bias
    last_bn: bool = False
    last_bn_affine: bool = True
    last_bn_center: bool = True  # False: the output batch norm scales but does not shift (SimCLR)
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
            layers.append(nn.BatchNorm1d(hidden_dim, affine=spec.hidden_bn_affine))
        layers.append(nn.ReLU(inplace=True))
        width = hidden_dim
    layers.append(nn.Linear(width, out_dim, bias=spec.last_bias and not spec.last_bn))
    if spec.last_bn:
        bn = nn.BatchNorm1d(out_dim, affine=spec.last_bn_affine)
        if spec.last_bn_affine and not spec.last_bn_center:
            bn.bias.requires_grad_(False)  # stays 0: the optimizer skips parameters without gradient
        layers.append(bn)
    return nn.Sequential(*layers)
