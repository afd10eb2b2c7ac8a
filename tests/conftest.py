"""Shared numpy reference helpers for the objective tests (``from conftest import ...``).

The closed-form gradients in the objective tests are derived on paper w.r.t. the normalized
``u = z/||z||`` and carried back to the raw ``z`` by :func:`through_normalization`; the library's
autograd result is compared with :func:`check_close` in float64.
"""

from __future__ import annotations

import numpy as np
import torch

#: Relative tolerance of a float64 gradient against its numpy closed form.
RTOL = 1e-8


def normalize(z: np.ndarray) -> np.ndarray:
    """Row-wise l2-normalization."""
    return z / np.linalg.norm(z, axis=1, keepdims=True)


def through_normalization(z: np.ndarray, grad_u: np.ndarray) -> np.ndarray:
    """dL/dz from dL/du for u = z/||z|| (row-wise): (g - u (u.g)) / ||z||."""
    norm = np.linalg.norm(z, axis=1, keepdims=True)
    u = z / norm
    return (grad_u - u * np.sum(u * grad_u, axis=1, keepdims=True)) / norm


def check_close(actual: torch.Tensor, expected: np.ndarray, rtol: float = RTOL) -> None:
    """``actual`` equals the nonzero reference ``expected`` to ``rtol``, absolute slack ``rtol`` x its largest entry."""
    scale = np.abs(expected).max()
    assert scale > 0
    np.testing.assert_allclose(actual.detach().numpy(), expected, rtol=rtol, atol=rtol * scale)


def leaf64(x: np.ndarray) -> torch.Tensor:
    """A float64 leaf tensor that requires grad (its ``.grad`` is the gradient to check)."""
    return torch.tensor(x, dtype=torch.float64, requires_grad=True)
