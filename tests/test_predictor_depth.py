"""The predictor depth option of BYOL/SimSiam: MLP, trained linear, or none."""

import pytest
import torch
from torch import nn

from siamgrad import methods
from siamgrad.errors import ConfigError


def _build(name, layers):
    backbone = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 12))
    return methods.build(name, backbone, 12, pred_layers=layers, proj_hidden_dim=16, proj_output_dim=8,
                         pred_hidden_dim=6)


@pytest.mark.parametrize("name", ["byol", "simsiam"])
def test_predictor_depth(name):
    assert _build(name, 0).predictor is None
    lin = _build(name, 1).predictor
    assert [type(m) for m in lin] == [nn.Linear] and lin[0].weight.shape == (8, 8)
    assert sum(isinstance(m, nn.Linear) for m in _build(name, 2).predictor) == 2
    with pytest.raises(ConfigError, match="method.pred_layers"):
        _build(name, -1)


def test_simsiam_without_predictor_is_plain_cosine_to_stopgrad():
    """With no predictor SimSiam's loss is -cos(z1, sg(z2)), averaged over both directions (numpy)."""
    torch.manual_seed(0)
    m = _build("simsiam", 0)
    views = [torch.randn(5, 3, 4, 4), torch.randn(5, 3, 4, 4)]
    loss, _ = m.training_step(views)
    with torch.no_grad():
        z = [m.projector(m.backbone(v)).numpy() for v in views]  # separate forwards: per-view batch norm
    import numpy as np

    def cos(a, b):
        return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)

    expected = -0.5 * (cos(z[0], z[1]).mean() + cos(z[1], z[0]).mean())
    assert abs(float(loss.detach()) - expected) < 1e-5
