"""Tests of siamgrad.augment: batched per-sample augmentations.

Every number is checked against an independent computation: torchvision's functional ops and
``RandomResizedCrop.get_params`` applied image by image, numpy re-derivations, or rates that
must match a probability within a binomial tolerance. The statistics run on the parameters that
``forward`` uses (``sample_params`` feeds ``apply_params``), and the detected effects in the
output images are matched against those parameters sample by sample.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchvision.transforms import RandomResizedCrop
from torchvision.transforms.v2 import functional as TF

from siamgrad.augment import ops, recipes
from siamgrad.augment.multiview import MultiViewAugment, build_augment, normalize_only
from siamgrad.augment.ops import blur_kernel_size
from siamgrad.augment.recipes import PRESETS, ViewRecipe
from siamgrad.augment.sampling import ViewParams
from siamgrad.errors import ConfigError, DataError

TV_LUMA = (0.2989, 0.587, 0.114)  # the red weight torchvision's tensor ops use


@pytest.fixture
def tv_luma(monkeypatch: pytest.MonkeyPatch) -> None:
    """Use torchvision's luma weights, so that ops built on grayscale compare exactly."""
    monkeypatch.setattr(ops, "LUMA_WEIGHTS", TV_LUMA)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _images(n: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, h, w), dtype=torch.uint8, generator=_gen(seed))


def _recipe(**kw) -> ViewRecipe:
    """A recipe with every random op off, except those named."""
    base = dict(size=4, scale=(1.0, 1.0), flip_p=0.0, jitter_p=0.0, gray_p=0.0, blur_p=0.0, solarize_p=0.0)
    base.update(kw)
    return ViewRecipe(**base)


def _binomial_ok(count: int, n: int, p: float, sigmas: float = 4.0) -> bool:
    return abs(count - n * p) <= sigmas * math.sqrt(n * p * (1 - p)) + 1e-9


def _ks(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov statistic."""
    a, b = np.sort(a), np.sort(b)
    grid = np.concatenate([a, b])
    cdf_a = np.searchsorted(a, grid, "right") / a.size
    cdf_b = np.searchsorted(b, grid, "right") / b.size
    return float(np.max(np.abs(cdf_a - cdf_b)))


def _ks_crit(n: int, m: int, c: float = 1.95) -> float:
    """KS critical value at alpha ~ 0.001."""
    return c * math.sqrt((n + m) / (n * m))


# --------------------------------------------------------------------------------------------
# Shapes, ranges, determinism
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n_views", [2, 3, 4])
@pytest.mark.parametrize("preset", ["simclr", "byol", "cifar", "digits"])
def test_views_shapes_dtype_and_range(n_views: int, preset: str) -> None:
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    aug = build_augment(preset, 10, n_views, mean=mean, std=std)
    x = _images(6, 14, 12)
    views = aug(x, generator=_gen(1))
    assert isinstance(views, list) and len(views) == n_views
    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)
    for v in views:
        assert v.shape == (6, 3, 10, 10) and v.dtype == torch.float32 and v.device == x.device
        raw = v * s + m  # back to [0, 1]
        assert raw.min() >= -1e-5 and raw.max() <= 1 + 1e-5
        assert raw.std() > 0.05  # not constant
    assert not torch.equal(views[0], views[1])


def test_views_cycle_recipes_and_sizes() -> None:
    aug = MultiViewAugment([ViewRecipe(size=8), ViewRecipe(size=5, blur_p=1.0)], n_views=3)
    views = aug(_images(4, 16, 16), generator=_gen(0))
    assert [tuple(v.shape) for v in views] == [(4, 3, 8, 8), (4, 3, 5, 5), (4, 3, 8, 8)]
    assert aug.view_recipes[2] is aug.recipes[0]


def test_gray_and_float_inputs() -> None:
    aug = build_augment("none", 8)
    gray = _images(3, 8, 8)[:, :1]
    views = aug(gray, generator=_gen(0))
    assert torch.equal(views[0][:, 0], views[0][:, 2])  # replicated channel
    expected = (gray.float() / 255 - 0.5) / 0.5
    torch.testing.assert_close(views[0], expected.expand(-1, 3, -1, -1), atol=1e-6, rtol=0)
    as_float = aug(gray.float() / 255, generator=_gen(0))
    torch.testing.assert_close(as_float[0], views[0], atol=1e-6, rtol=0)


def test_determinism_and_seed_sensitivity() -> None:
    aug = build_augment("byol", 12, 3)
    x = _images(9, 16, 16)
    a = aug(x, generator=_gen(7))
    b = aug(x, generator=_gen(7))
    c = aug(x, generator=_gen(8))
    for va, vb, vc in zip(a, b, c):
        assert torch.equal(va, vb)
        assert not torch.allclose(va, vc)


def test_forward_is_sample_params_then_apply_params_and_chunking_changes_nothing() -> None:
    aug = build_augment("simclr", 12, 2, blur_sigma_ref_size=None)
    x = _images(10, 16, 16)
    views = aug(x, generator=_gen(3))
    params = aug.sample_params(10, 16, 16, generator=_gen(3))
    assert all(torch.equal(v, w) for v, w in zip(views, aug.apply_params(x, params)))
    aug.chunk_size = 3  # 4 chunks, the last one short
    chunked = aug.apply_params(x, params)
    for v, w in zip(views, chunked):
        torch.testing.assert_close(w, v, atol=1e-5, rtol=0)


# --------------------------------------------------------------------------------------------
# Statistics of the sampled parameters, and their effect in the images
# --------------------------------------------------------------------------------------------


def _tv_boxes(n: int, h: int, w: int, scale, ratio, seed: int) -> np.ndarray:
    img = torch.zeros(1, h, w)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return np.array([RandomResizedCrop.get_params(img, list(scale), list(ratio)) for _ in range(n)])


@pytest.mark.parametrize(
    "h, w, scale, ratio",
    [
        (64, 64, (0.2, 1.0), (3 / 4, 4 / 3)),
        (48, 80, (0.08, 1.0), (3 / 4, 4 / 3)),
        (40, 40, (0.6, 1.0), (0.5, 2.0)),  # many rejected candidates
    ],
)
def test_crop_boxes_match_torchvision_distribution(h, w, scale, ratio) -> None:
    n = 4000
    aug = MultiViewAugment([_recipe(scale=scale, ratio=ratio)], n_views=2)
    p = aug.sample_params(n, h, w, generator=_gen(11))[0]
    top, left, ch, cw = (t.numpy() for t in (p.top, p.left, p.height, p.width))
    # boxes lie inside the image
    assert (top >= 0).all() and (left >= 0).all() and (ch >= 1).all() and (cw >= 1).all()
    assert (top + ch <= h).all() and (left + cw <= w).all()
    # area and aspect within the ranges, up to the rounding of w and h to integers: the drawn
    # w*, h* lie within 0.5 px of the box's w, h, and w* h* / (H W) in scale, w* / h* in ratio
    area = ch * cw / (h * w)
    np.testing.assert_allclose(p.area_fraction.numpy(), area)
    np.testing.assert_allclose(p.aspect_ratio.numpy(), cw / ch)
    assert ((ch + 0.5) * (cw + 0.5) >= scale[0] * h * w).all()
    assert ((ch - 0.5) * (cw - 0.5) <= scale[1] * h * w).all()
    assert ((cw + 0.5) / (ch - 0.5) >= ratio[0]).all() and ((cw - 0.5) / (ch + 0.5) <= ratio[1]).all()
    aspect = cw / ch
    # the distributions match torchvision's sampler (two-sample KS at alpha ~ 0.001)
    ref = _tv_boxes(n, h, w, scale, ratio, seed=5)
    r_top, r_left, r_h, r_w = ref.T
    crit = _ks_crit(n, n)
    assert _ks(area, r_h * r_w / (h * w)) < crit
    assert _ks(np.log(aspect), np.log(r_w / r_h)) < crit
    assert _ks(ch, r_h) < crit and _ks(cw, r_w) < crit
    # positions are uniform over the valid offsets: compare the offset relative to its range
    for pos, size, r_pos, r_size, side in ((top, ch, r_top, r_h, h), (left, cw, r_left, r_w, w)):
        free, r_free = side - size, side - r_size
        rel, r_rel = pos[free > 0] / free[free > 0], r_pos[r_free > 0] / r_free[r_free > 0]
        assert _ks(rel, r_rel) < _ks_crit(rel.size, r_rel.size)
        assert rel.min() == 0 and rel.max() == 1  # both ends reachable


@pytest.mark.parametrize("h, w, box", [(20, 80, (0, 26, 20, 27)), (80, 20, (26, 0, 27, 20)), (30, 30, (7, 0, 15, 30))])
def test_crop_fallback_is_torchvision_center_crop(h, w, box) -> None:
    # aspect 4 (or 1/4) with ratio within [3/4, 4/3] and a large scale: no candidate fits;
    # for the square image, ratio (2, 3) never fits
    n = 500
    ratio = (3 / 4, 4 / 3) if h != w else (2.0, 3.0)
    aug = MultiViewAugment([_recipe(scale=(0.95, 1.0), ratio=ratio)], n_views=2)
    p = aug.sample_params(n, h, w, generator=_gen(2))[0]
    ref = _tv_boxes(n, h, w, (0.95, 1.0), ratio, seed=0)
    assert (ref == np.array(box)).all()  # torchvision always falls back here, to this box
    got = torch.stack([p.top, p.left, p.height, p.width], 1).numpy()
    assert (got == np.array(box)).all()


def test_flip_rate_and_flips_in_the_images() -> None:
    n, flip_p = 4000, 0.3
    aug = MultiViewAugment([_recipe(flip_p=flip_p)], n_views=2)
    x = torch.zeros(n, 3, 4, 4, dtype=torch.uint8)
    x[..., 2:] = 255  # dark left half, bright right half
    params = aug.sample_params(n, 4, 4, generator=_gen(4))
    views = aug.apply_params(x, params)
    for v, p in zip(views, params):
        flipped = v[:, 0, 0, 0] > v[:, 0, 0, 3]  # bright on the left
        assert torch.equal(flipped, p.flip)
        assert _binomial_ok(int(flipped.sum()), n, flip_p)
    assert not torch.equal(params[0].flip, params[1].flip)  # views draw independently


def test_grayscale_rate_detected_in_outputs() -> None:
    n, gray_p = 4000, 0.2
    aug = MultiViewAugment([_recipe(size=3, gray_p=gray_p)], n_views=2)
    x = _images(n, 3, 3)
    params = aug.sample_params(n, 3, 3, generator=_gen(5))
    for v, p in zip(aug.apply_params(x, params), params):
        is_gray = (v[:, 0] == v[:, 1]).all(dim=(1, 2)) & (v[:, 1] == v[:, 2]).all(dim=(1, 2))
        assert torch.equal(is_gray, p.gray)
        assert _binomial_ok(int(is_gray.sum()), n, gray_p)


def test_solarize_rate_detected_in_outputs() -> None:
    n, sol_p = 4000, 0.2
    recipe = _recipe(size=2, solarize_p=sol_p, solarize_threshold=0.5)
    aug = MultiViewAugment([recipe], n_views=2, mean=(0,) * 3, std=(1,) * 3)
    x = torch.full((n, 3, 2, 2), 200, dtype=torch.uint8)
    x[:, :, 0, 0] = 50  # below the threshold: never inverted
    params = aug.sample_params(n, 2, 2, generator=_gen(6))
    for v, p in zip(aug.apply_params(x, params), params):
        inverted = (v[:, :, 1, 1] - (1 - 200 / 255)).abs().max(dim=1).values < 1e-6
        kept = (v[:, :, 1, 1] - 200 / 255).abs().max(dim=1).values < 1e-6
        assert torch.equal(inverted, p.solarize) and torch.equal(kept, ~p.solarize)
        torch.testing.assert_close(v[:, :, 0, 0], torch.full((n, 3), 50 / 255), atol=1e-6, rtol=0)
        assert _binomial_ok(int(inverted.sum()), n, sol_p)


def test_jitter_rate_and_brightness_factors() -> None:
    n, jitter_p, b = 4000, 0.8, 0.4
    recipe = _recipe(size=2, jitter_p=jitter_p, brightness=b, contrast=0.0, saturation=0.0, hue=0.0)
    aug = MultiViewAugment([recipe], n_views=2, mean=(0,) * 3, std=(1,) * 3)
    x = torch.full((n, 3, 2, 2), 100, dtype=torch.uint8)
    params = aug.sample_params(n, 2, 2, generator=_gen(8))
    for v, p in zip(aug.apply_params(x, params), params):
        factor = v[:, 0, 0, 0] / (100 / 255)
        changed = (factor - 1).abs() > 1e-6
        assert torch.equal(changed, p.jitter)
        assert _binomial_ok(int(changed.sum()), n, jitter_p)
        f = factor[changed].numpy()
        assert f.min() >= 1 - b - 1e-5 and f.max() <= 1 + b + 1e-5
        # uniform on [1 - b, 1 + b]: KS against the uniform CDF
        u = np.sort((f - (1 - b)) / (2 * b))
        d = np.max(np.maximum(np.arange(1, u.size + 1) / u.size - u, u - np.arange(u.size) / u.size))
        assert d < 1.95 / math.sqrt(u.size)


def test_factor_and_sigma_ranges() -> None:
    n = 4000
    recipe = ViewRecipe(size=56, brightness=0.9, contrast=1.5, saturation=0.2, hue=0.3, blur_sigma=(0.5, 3.0))
    p = MultiViewAugment([recipe], n_views=2).sample_params(n, 60, 60, generator=_gen(9))[0]
    ranges = [("brightness", 0.1, 1.9), ("contrast", 0.0, 2.5), ("saturation", 0.8, 1.2), ("hue", -0.3, 0.3)]
    for name, lo, hi in ranges:
        t = getattr(p, name)
        assert t.min() >= lo - 1e-6 and t.max() <= hi + 1e-6
        assert t.min() < lo + 0.01 * (hi - lo) and t.max() > hi - 0.01 * (hi - lo)  # covers the range
    scale = 56 / 224  # sigma is in pixels of a 224-pixel image
    assert p.sigma.min() >= 0.5 * scale - 1e-6 and p.sigma.max() <= 3.0 * scale + 1e-6
    for name, prob in [("jitter", 0.8), ("gray", 0.2), ("blur", 0.5), ("flip", 0.5), ("solarize", 0.0)]:
        assert _binomial_ok(int(getattr(p, name).sum()), n, prob)
    absolute = dataclasses.replace(recipe, blur_sigma_ref_size=None)
    q = MultiViewAugment([absolute], n_views=2).sample_params(n, 60, 60, generator=_gen(9))[0]
    assert q.sigma.min() >= 0.5 - 1e-6 and q.sigma.max() <= 3.0 + 1e-6


def test_blur_kernel_size_rule() -> None:
    assert [blur_kernel_size(s) for s in (8, 32, 64, 96, 224)] == [3, 3, 7, 9, 23]


# --------------------------------------------------------------------------------------------
# Exactness against torchvision's functional ops
# --------------------------------------------------------------------------------------------


def _float_images(n: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    x = torch.rand(n, 3, h, w, generator=_gen(seed))
    x[0] = 0.5  # gray image
    x[1, 0] = x[1, 1]  # R == G ties
    x[2, :, :2] = torch.tensor([0.1, 0.9, 0.9]).view(3, 1, 1)  # G == B ties
    x[3, :, 0, 0] = 1.0  # white pixel
    return x


@pytest.mark.usefixtures("tv_luma")
@pytest.mark.parametrize(
    "ours, theirs, lo, hi, atol",
    [
        (ops.adjust_brightness, TF.adjust_brightness, 0.0, 2.0, 1e-6),
        (ops.adjust_contrast, TF.adjust_contrast, 0.0, 2.0, 2e-6),
        (ops.adjust_saturation, TF.adjust_saturation, 0.0, 2.0, 2e-6),
        (ops.adjust_hue, TF.adjust_hue, -0.5, 0.5, 5e-6),
    ],
)
def test_color_ops_match_torchvision(ours, theirs, lo, hi, atol) -> None:
    x = _float_images(12, 7, 9)
    factors = lo + (hi - lo) * torch.rand(12, generator=_gen(1))
    factors[4] = 1.0 if lo >= 0 else 0.0  # identity
    got = ours(x, factors)
    ref = torch.stack([theirs(x[i], float(factors[i])) for i in range(12)])
    torch.testing.assert_close(got, ref, atol=atol, rtol=0)
    assert torch.equal(x, _float_images(12, 7, 9))  # inputs untouched


def test_grayscale_uses_itu_luma_and_matches_torchvision_up_to_its_red_weight(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    x = _float_images(5, 4, 6)
    gray = ops.rgb_to_gray(x)
    xn = x.double().numpy()
    expected = 0.299 * xn[:, 0] + 0.587 * xn[:, 1] + 0.114 * xn[:, 2]
    np.testing.assert_allclose(gray[:, 0].numpy(), expected, atol=1e-6)
    monkeypatch.setattr(ops, "LUMA_WEIGHTS", TV_LUMA)
    ref = torch.stack([TF.rgb_to_grayscale(x[i], num_output_channels=1) for i in range(5)])
    torch.testing.assert_close(ops.rgb_to_gray(x), ref, atol=1e-6, rtol=0)


def test_solarize_matches_torchvision() -> None:
    x = _float_images(6, 5, 5)
    x[:, :, 0, 0] = 0.4  # exactly at the threshold: inverted
    mask = torch.tensor([True, False, True, True, False, True])
    got = ops.solarize(x, mask, 0.4)
    ref = torch.stack([TF.solarize(x[i], 0.4) if mask[i] else x[i] for i in range(6)])
    torch.testing.assert_close(got, ref, atol=0, rtol=0)


@pytest.mark.parametrize("method", ["taps", "conv", "auto"])
@pytest.mark.parametrize("k", [3, 5, 9])
def test_gaussian_blur_matches_torchvision(method: str, k: int) -> None:
    x = _float_images(6, 11, 13)
    sigma = 0.1 + 2.5 * torch.rand(6, generator=_gen(2))
    got = ops.gaussian_blur(x, sigma, k, method=method)
    ref = torch.stack([TF.gaussian_blur(x[i], [k, k], [float(sigma[i])] * 2) for i in range(6)])
    torch.testing.assert_close(got, ref, atol=2e-6, rtol=0)


def test_gaussian_blur_kernels_closed_form() -> None:
    sigma = torch.tensor([0.5, 1.0, 3.0])
    d = np.arange(5) - 2.0
    for i, s in enumerate(sigma.tolist()):
        g = np.exp(-(d**2) / (2 * s * s))
        np.testing.assert_allclose(ops.gaussian_kernels(sigma, 5)[i].numpy(), g / g.sum(), atol=1e-7)


def test_flip_matches_torchvision() -> None:
    x = _float_images(4, 6, 8)
    full = lambda v: torch.full((4,), v, dtype=torch.long)  # noqa: E731
    flip = torch.tensor([True, False, True, False])
    got = ops.resized_crop(x, full(0), full(0), full(6), full(8), 6, flip)  # 6x8 -> 6x6
    ref = torch.stack([TF.resize(x[i], [6, 6], antialias=True) for i in range(4)])
    ref = torch.stack([TF.horizontal_flip(ref[i]) if flip[i] else ref[i] for i in range(4)])
    torch.testing.assert_close(got, ref, atol=1e-6, rtol=0)
    square = _float_images(4, 7, 7)
    same = ops.resized_crop(square, full(0), full(0), full(7), full(7), 7, flip)
    expected = torch.where(flip.view(4, 1, 1, 1), square.flip(-1), square)
    torch.testing.assert_close(same, expected, atol=1e-6, rtol=0)  # identity resample, flipped


@pytest.mark.parametrize("size", [4, 9, 16, 40])
def test_resized_crop_matches_torchvision(size: int) -> None:
    n = 8
    x = _float_images(n, 20, 24)
    g = _gen(size)
    h = torch.randint(1, 21, (n,), generator=g)
    w = torch.randint(1, 25, (n,), generator=g)
    top = (torch.rand(n, generator=g) * (21 - h)).long()
    left = (torch.rand(n, generator=g) * (25 - w)).long()
    got = ops.resized_crop(x, top, left, h, w, size)
    boxes = [(int(top[i]), int(left[i]), int(h[i]), int(w[i])) for i in range(n)]
    ref = torch.stack([TF.resized_crop(x[i], *boxes[i], [size, size], antialias=True) for i in range(n)])
    torch.testing.assert_close(got, ref, atol=2e-6, rtol=0)


def test_full_box_reproduces_resize() -> None:
    x = _float_images(4, 8, 8)
    full = torch.full((4,), 8, dtype=torch.long)
    zero = torch.zeros(4, dtype=torch.long)
    up = ops.resized_crop(x, zero, zero, full, full, 20)
    bilinear = F.interpolate(x, size=(20, 20), mode="bilinear", align_corners=False)
    torch.testing.assert_close(up, bilinear, atol=1e-6, rtol=0)
    down = ops.resized_crop(x, zero, zero, full, full, 4)
    aa = F.interpolate(x, size=(4, 4), mode="bilinear", align_corners=False, antialias=True)
    torch.testing.assert_close(down, aa, atol=1e-6, rtol=0)
    # 2x down: weights (1, 3, 3, 1) / 8 on pixels 2o-1 .. 2o+2, renormalized at the border
    xn = x.double().numpy()
    taps = np.zeros((4, 8))
    for o in range(4):
        for d, wgt in zip(range(-1, 3), (1, 3, 3, 1)):
            if 0 <= 2 * o + d < 8:
                taps[o, 2 * o + d] = wgt
    taps /= taps.sum(1, keepdims=True)
    np.testing.assert_allclose(down.numpy(), np.einsum("oh,nchw,pw->ncop", taps, xn, taps), atol=1e-6)
    same = ops.resized_crop(x, zero, zero, full, full, 8)
    torch.testing.assert_close(same, x, atol=1e-6, rtol=0)


def test_crop_box_lands_the_pattern() -> None:
    pattern = torch.arange(64, dtype=torch.float32).view(8, 8) / 64  # distinctive: every pixel differs
    x = torch.zeros(2, 3, 20, 20)
    x[0, :, 5:13, 9:17] = pattern
    x[1, :, 0:8, 12:20] = pattern
    top, left = torch.tensor([5, 0]), torch.tensor([9, 12])
    side = torch.tensor([8, 8])
    got = ops.resized_crop(x, top, left, side, side, 8)
    torch.testing.assert_close(got, pattern.expand(2, 3, 8, 8), atol=1e-6, rtol=0)
    flipped = ops.resized_crop(x, top, left, side, side, 8, flip=torch.tensor([True, False]))
    torch.testing.assert_close(flipped[0], pattern.flip(-1).expand(3, 8, 8), atol=1e-6, rtol=0)
    up = ops.resized_crop(x, top, left, side, side, 16)
    ref = F.interpolate(pattern.view(1, 1, 8, 8), size=16, mode="bilinear", align_corners=False)
    torch.testing.assert_close(up, ref.expand(2, 3, 16, 16), atol=1e-6, rtol=0)


def _reference_view(img: torch.Tensor, p: ViewParams, i: int, r: ViewRecipe, mean, std) -> torch.Tensor:
    """One sample of one view, op by op with torchvision's functional API."""
    box = (int(p.top[i]), int(p.left[i]), int(p.height[i]), int(p.width[i]))
    y = TF.resized_crop(img, *box, [r.size, r.size], antialias=True)
    if p.flip[i]:
        y = TF.horizontal_flip(y)
    if p.jitter[i]:
        y = TF.adjust_brightness(y, float(p.brightness[i]))
        y = TF.adjust_contrast(y, float(p.contrast[i]))
        y = TF.adjust_saturation(y, float(p.saturation[i]))
        y = TF.adjust_hue(y, float(p.hue[i]))
    if p.gray[i]:
        y = TF.rgb_to_grayscale(y, num_output_channels=3)
    if p.blur[i]:
        k = blur_kernel_size(r.size)
        y = TF.gaussian_blur(y, [k, k], [float(p.sigma[i])] * 2)
    if p.solarize[i]:
        y = TF.solarize(y, r.solarize_threshold)
    return TF.normalize(y, list(mean), list(std))


@pytest.mark.usefixtures("tv_luma")
@pytest.mark.parametrize("chunk", [None, 5])
def test_whole_pipeline_matches_torchvision_per_image(chunk) -> None:
    recipes = [
        ViewRecipe(size=12, scale=(0.1, 1.0), jitter_p=0.8, gray_p=0.3, blur_p=0.5, blur_sigma=(0.3, 1.5),
                   blur_sigma_ref_size=None, solarize_p=0.0),
        ViewRecipe(size=20, scale=(0.3, 1.0), ratio=(0.5, 2.0), hue=0.5, gray_p=0.2, blur_p=0.5,
                   blur_sigma=(0.5, 2.0), blur_sigma_ref_size=None, solarize_p=0.5, solarize_threshold=0.4),
    ]  # fmt: skip
    mean, std = (0.45, 0.5, 0.55), (0.22, 0.25, 0.2)
    aug = MultiViewAugment(recipes, n_views=3, mean=mean, std=std)
    aug.chunk_size = chunk
    n = 16
    x = _images(n, 18, 15, seed=3)
    params = aug.sample_params(n, 18, 15, generator=_gen(12))
    views = aug.apply_params(x, params)
    xf = x.float() / 255
    for v, (view, p) in enumerate(zip(views, params)):
        r = aug.view_recipes[v]
        ref = torch.stack([_reference_view(xf[i], p, i, r, mean, std) for i in range(n)])
        torch.testing.assert_close(view, ref, atol=5e-5, rtol=0)
    # every op was exercised on some sample and skipped on another
    for name in ("flip", "jitter", "gray", "blur"):
        got = torch.cat([getattr(p, name) for p in params])
        assert got.any() and not got.all(), name
    assert params[1].solarize.any()


# --------------------------------------------------------------------------------------------
# normalize_only, presets, errors
# --------------------------------------------------------------------------------------------


def test_normalize_only() -> None:
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.4, 0.3)
    x = _images(3, 8, 8)
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(normalize_only(x, 8, mean, std), (x.float() / 255 - m) / s, atol=1e-6, rtol=0)
    wide = _images(3, 10, 15)
    got = normalize_only(wide, 6, mean, std)
    crops = [TF.center_crop(wide[i].float() / 255, [10, 10]) for i in range(3)]
    ref = torch.stack([TF.resize(c, [6, 6], antialias=True) for c in crops])
    torch.testing.assert_close(got, (ref - m) / s, atol=1e-5, rtol=0)


def test_presets_follow_their_recipes() -> None:
    assert set(PRESETS) == {"simclr", "byol", "cifar", "cifar_small_proj", "digits", "none"}
    simclr = PRESETS["simclr"][0]
    assert (simclr.scale, simclr.jitter_p, simclr.hue, simclr.gray_p, simclr.blur_p) == ((0.2, 1.0), 0.8, 0.1, 0.2, 0.5)
    b1, b2 = PRESETS["byol"]
    assert (b1.blur_p, b1.solarize_p, b2.blur_p, b2.solarize_p) == (1.0, 0.0, 0.1, 0.2)
    assert b1.saturation == b2.saturation == 0.2 and b1.scale == (0.08, 1.0)
    cifar = PRESETS["cifar"][0]
    assert (cifar.scale, cifar.blur_p, cifar.solarize_p, cifar.hue) == ((0.08, 1.0), 0.0, 0.0, 0.1)
    small = PRESETS["cifar_small_proj"][0]
    assert (small.hue, small.saturation, small.blur_p, small.gray_p) == (0.0, 0.4, 0.0, 0.2)
    digits = PRESETS["digits"][0]
    assert (digits.scale, digits.flip_p, digits.gray_p, digits.blur_p) == ((0.4, 1.0), 0.0, 0.0, 0.0)
    assert (digits.brightness, digits.contrast, digits.saturation, digits.hue) == (0.4, 0.4, 0.0, 0.0)
    none = PRESETS["none"][0]
    assert none.scale == (1.0, 1.0) and all(getattr(none, f) == 0 for f in recipes._PROB_FIELDS)
    # "none" on square images is a plain resize
    x = _images(4, 12, 12)
    views = build_augment("none", 6)(x, generator=_gen(0))
    expected = (F.interpolate(x.float() / 255, size=6, mode="bilinear", antialias=True) - 0.5) / 0.5
    torch.testing.assert_close(views[1], expected, atol=1e-5, rtol=0)


def test_overrides_apply_to_every_view() -> None:
    aug = build_augment("byol", 16, 2, scale=[0.5, 0.9], blur_p=0.0)
    assert all(r.scale == (0.5, 0.9) and r.blur_p == 0.0 and r.size == 16 for r in aug.view_recipes)
    assert aug.view_recipes[1].solarize_p == 0.2  # untouched fields keep the preset's values


def _one_line(excinfo: pytest.ExceptionInfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg and msg
    return msg


@pytest.mark.parametrize(
    "call, words",
    [
        (lambda: build_augment("simclrr", 32), ["simclrr", "byol", "cifar_small_proj", "none"]),
        (lambda: build_augment("simclr", 32, blurr_p=0.1), ["blurr_p", "blur_p", "solarize_threshold"]),
        (lambda: build_augment("simclr", 32, n_views=1), ["n_views", ">= 2"]),
        (lambda: build_augment("simclr", 32, n_views=0), ["n_views"]),
        (lambda: build_augment("simclr", 32, scale=(0.0, 1.0)), ["scale"]),
        (lambda: build_augment("simclr", 32, scale=(0.5, 1.5)), ["scale"]),
        (lambda: build_augment("simclr", 32, scale=(0.9, 0.5)), ["scale"]),
        (lambda: build_augment("simclr", 32, scale=0.5), ["scale"]),
        (lambda: build_augment("simclr", 32, ratio=(0.0, 1.0)), ["ratio"]),
        (lambda: build_augment("simclr", 32, gray_p=1.5), ["gray_p"]),
        (lambda: build_augment("simclr", 32, hue=0.6), ["hue"]),
        (lambda: build_augment("simclr", 32, brightness=-0.1), ["brightness"]),
        (lambda: build_augment("simclr", 32, blur_sigma=(0.0, 1.0)), ["blur_sigma"]),
        (lambda: build_augment("simclr", 1), ["size"]),
        (lambda: build_augment("simclr", 32, std=(0.5, 0.0, 0.5)), ["std"]),
        (lambda: build_augment("simclr", 32, mean=(0.5, 0.5)), ["mean"]),
    ],
)
def test_config_errors(call, words) -> None:
    with pytest.raises(ConfigError) as excinfo:
        call()
    msg = _one_line(excinfo)
    for word in words:
        assert word in msg


def test_single_view_needs_the_flag() -> None:
    aug = MultiViewAugment(PRESETS["simclr"], n_views=1, allow_single_view=True)
    assert len(aug(_images(2, 8, 8), generator=_gen(0))) == 1


@pytest.mark.parametrize(
    "bad",
    [
        torch.zeros(3, 8, 8, dtype=torch.uint8),
        torch.zeros(2, 4, 8, 8, dtype=torch.uint8),
        torch.zeros(2, 3, 8, 8, dtype=torch.int32),
    ],
)
def test_data_errors(bad: torch.Tensor) -> None:
    with pytest.raises(DataError) as excinfo:
        build_augment("simclr", 8)(bad)
    _one_line(excinfo)


# the CUDA paths (augmentation on the device against the CPU, ragged batches) are in tests/test_cuda.py
