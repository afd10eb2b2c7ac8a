"""Tests of streamed image folders and shards (siamgrad.data.sources, .streaming, .decode) and of ragged-batch cropping.

The image files are written here (torchvision's encoders; a grayscale JPEG and PNG, a corrupt
JPEG) with a distinct height per file, so a decoded image's size names its file: which samples a
batch holds is read off the decoded pixels, not off the code's own bookkeeping. References are
independent: Pillow decodes the files, torchvision's ``RandomResizedCrop.get_params`` and
``resized_crop`` give the crop statistics and pixels, Python re-derives the shuffle buffer's
displacement bound.
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.io import encode_jpeg, encode_png
from torchvision.transforms import RandomResizedCrop
from torchvision.transforms.v2 import functional as TF

from siamgrad import checkpoint as ck
from siamgrad.augment.multiview import build_augment, MultiViewAugment
from siamgrad.augment.ragged import RaggedImages
from siamgrad.augment.recipes import ViewRecipe
from siamgrad.config import build_config
from siamgrad.errors import DataError
from siamgrad.data.bad_images import BadImageCounter, UnreadableImageWarning
from siamgrad.data.decode import decode_image_bytes
from siamgrad.data.sets import load_train_set
from siamgrad.data.sources import FolderSource, PackedStrings, shuffle_buffer_order
from siamgrad.data.streaming import StreamBatches, StreamedDataset
from siamgrad.train.loop import Trainer, train

CLASSES = ("cat", "dog", "eel")

# torchvision >= 0.29 announces on every encode/decode call that its codecs move to torchcodec
pytestmark = pytest.mark.filterwarnings("ignore:.*image decoding:DeprecationWarning")


def _img(h: int, w: int, seed: int, channels: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    # smooth content (JPEG keeps it well) plus a little noise
    base = torch.rand(channels, 1, 1, generator=g) * 200
    ramp = torch.linspace(0, 50, w).view(1, 1, w) + torch.linspace(0, 5, h).view(1, h, 1)
    return (base + ramp + torch.rand(channels, h, w, generator=g) * 4).clamp(0, 255).to(torch.uint8)


def write_folder(root: Path, n: int = 25, corrupt: int = 0, first_h: int = 12, gray: bool = False) -> list[tuple]:
    """``n`` images over the class folders, height ``first_h + i`` (unique), JPEG or PNG;
    ``corrupt`` garbage ``.jpg`` files on top. Returns ``(path, label, (h, w))`` of the good ones."""
    out = []
    for i in range(n):
        label = i % len(CLASSES)
        d = root / CLASSES[label]
        d.mkdir(parents=True, exist_ok=True)
        h, w = first_h + i, 10 + (i * 7) % 23
        ch = 1 if gray and i in (1, 2) else 3
        img = _img(h, w, i, ch)
        if i % 4 == 3 or (gray and i == 2):
            path = d / f"im{i:03d}.png"
            path.write_bytes(encode_png(img).numpy().tobytes())
        else:
            path = d / f"im{i:03d}.jpg"
            path.write_bytes(encode_jpeg(img, quality=95).numpy().tobytes())
        out.append((path, label, (h, w)))
    for k in range(corrupt):
        d = root / CLASSES[k % len(CLASSES)]
        d.mkdir(parents=True, exist_ok=True)
        (d / f"zz_bad{k}.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(7, 57)) * 3)
    return out


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> tuple[Path, list[tuple]]:
    root = tmp_path_factory.mktemp("folder")
    return root, write_folder(root, gray=True)


def _collect(batches: StreamBatches, epoch: int, start: int = 0) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    return [(im.data.clone(), im.sizes.clone(), lab.clone()) for im, lab in batches.epoch(epoch, start)]


# --------------------------------------------------------------------------------------------
# decoding


def test_decoding_matches_pillow_and_gray_becomes_rgb(folder) -> None:
    _, files = folder
    for path, _, (h, w) in files[:8]:
        got = decode_image_bytes(path.read_bytes())
        with Image.open(path) as im:
            ref = torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1)
        assert got.dtype == torch.uint8 and got.shape == (3, h, w)
        # PNG is lossless and exact; libjpeg-turbo's IDCT differs from Pillow's by a level or two
        tol = 0 if path.suffix == ".png" else 3
        assert (got.int() - ref.int()).abs().max() <= tol, path.name
    for path, _, _ in files[1:3]:  # the grayscale JPEG and PNG
        got = decode_image_bytes(path.read_bytes())
        assert torch.equal(got[0], got[1]) and torch.equal(got[1], got[2])
    with pytest.raises(ValueError):
        decode_image_bytes(b"\xff\xd8\xff\xe0 not a jpeg at all")
    big = decode_image_bytes(encode_png(_img(60, 90, 1)).numpy().tobytes(), max_side=30)
    assert big.shape == (3, 20, 30)


# --------------------------------------------------------------------------------------------
# order, ranks, workers, resume


def test_every_sample_exactly_once_across_2_ranks_x_2_workers(folder) -> None:
    root, files = folder
    src = FolderSource.scan(root)
    assert src.classes == list(CLASSES) and len(src) == len(files)
    expected = Counter((size, label) for _, label, size in files)
    for epoch in (0, 1):
        seen: Counter = Counter()
        for rank in (0, 1):
            b = StreamBatches(src, "cpu", batch_size=6, seed=3, rank=rank, world=2, workers=2, drop_last=False)
            assert len(b) == 5  # 25 samples: 4 full global batches and one of 1
            for images, labels in b.epoch(epoch):
                for (h, w), lab in zip(images.sizes.tolist(), labels.tolist()):
                    seen[((h, w), lab)] += 1
                # the decoded pixels are those of the file with that size (its unique height)
                k = next(i for i, f in enumerate(files) if f[2] == tuple(images.sizes[0].tolist()))
                with Image.open(files[k][0]) as im:
                    ref = torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1)
                assert (images.image(0).int() - ref.int()).abs().max() <= 3
        assert seen == expected, f"epoch {epoch}"
    # training batches (drop_last): 4 x 6 distinct samples, the last entry of the order left out
    b0 = StreamBatches(src, "cpu", batch_size=6, seed=3, rank=0, world=2, workers=2)
    b1 = StreamBatches(src, "cpu", batch_size=6, seed=3, rank=1, world=2, workers=2)
    got = [tuple(s) for b in (b0, b1) for im, _ in b.epoch(0) for s in im.sizes.tolist()]
    assert len(got) == 24 == len(set(got))
    left_out = files[int(b0.order(0)[-1])][2]
    assert set(got) | {left_out} == {f[2] for f in files}


def test_order_is_a_function_of_seed_and_epoch_and_workers_do_not_matter(folder) -> None:
    root, _ = folder
    src = FolderSource.scan(root)
    one = StreamBatches(src, "cpu", batch_size=5, seed=1, workers=0)
    two = StreamBatches(src, "cpu", batch_size=5, seed=1, workers=2)
    a, b = _collect(one, 2), _collect(two, 2)
    assert len(a) == len(b) == 5
    for (da, sa, la), (db, sb, lb) in zip(a, b):
        assert torch.equal(da, db) and torch.equal(sa, sb) and torch.equal(la, lb)
    assert sorted(one.order(2).tolist()) == list(range(len(src)))
    assert not np.array_equal(one.order(2), one.order(3))
    assert not np.array_equal(one.order(2), StreamBatches(src, "cpu", 5, seed=2, workers=0).order(2))
    # the in-memory trainer's order for the same (seed, epoch)
    g = torch.Generator().manual_seed(1 * 1_000_003 + 2)
    assert np.array_equal(one.order(2), torch.randperm(len(src), generator=g).numpy())


def test_resume_mid_epoch_yields_exactly_the_remaining_batches(folder) -> None:
    root, _ = folder
    src = FolderSource.scan(root)
    b = StreamBatches(src, "cpu", batch_size=4, seed=7, workers=1)
    full = _collect(b, 1)
    rest = _collect(StreamBatches(src, "cpu", batch_size=4, seed=7, workers=0), 1, start=4)
    assert len(full) == 6 and len(rest) == 2
    for (da, sa, la), (db, sb, lb) in zip(full[4:], rest):
        assert torch.equal(da, db) and torch.equal(sa, sb) and torch.equal(la, lb)


def test_background_thread_gives_the_same_batches_and_stops_cleanly(folder) -> None:
    root, _ = folder
    src = FolderSource.scan(root)
    plain = _collect(StreamBatches(src, "cpu", batch_size=4, seed=5, workers=0), 0)
    threaded = StreamBatches(src, "cpu", batch_size=4, seed=5, workers=1, thread=True)
    got = _collect(threaded, 0)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[2], b[2]) for a, b in zip(plain, got))
    for i, _ in enumerate(threaded.epoch(1)):  # leaving early must not hang
        if i == 1:
            break


def test_shuffle_buffer_is_a_permutation_with_bounded_moves() -> None:
    seq = np.arange(200, dtype=np.int64)
    for k in (1, 7, 50, 500):
        out = shuffle_buffer_order(seq, k, torch.Generator().manual_seed(k))
        assert sorted(out.tolist()) == seq.tolist()
        pos = np.empty_like(out)
        pos[out] = np.arange(len(out))
        # an item leaves at the earliest when the K-th item after it comes in
        assert (pos >= seq - (k - 1)).all()
    assert (shuffle_buffer_order(seq, 1, torch.Generator()) == seq).all()
    # the first item out is uniform over the first K in (K = 4, 800 seeds: binomial tolerance)
    first = Counter(int(shuffle_buffer_order(seq, 4, torch.Generator().manual_seed(s))[0]) for s in range(800))
    assert set(first) == {0, 1, 2, 3}
    assert all(abs(c - 200) <= 4 * math.sqrt(800 * 0.25 * 0.75) for c in first.values())


def test_packed_file_names_round_trip() -> None:
    names = ["cat/a.jpg", "", "dög/ß 1.png", "x" * 300]
    packed = PackedStrings(names)
    assert len(packed) == 4 and list(packed) == names and packed[-1] == names[-1] and packed[1:3] == names[1:3]
    with pytest.raises(IndexError):
        packed[4]


# --------------------------------------------------------------------------------------------
# unreadable files


def test_corrupt_file_is_skipped_counted_and_named(tmp_path) -> None:
    files = write_folder(tmp_path, n=20, corrupt=1)
    src = FolderSource.scan(tmp_path)
    assert len(src) == 21
    bad_name = str(tmp_path / "cat" / "zz_bad0.jpg")
    b = StreamBatches(src, "cpu", batch_size=7, seed=0, workers=1, max_bad_fraction=0.1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for epoch in (0, 1):
            for images, labels in b.epoch(epoch):
                assert len(images) == 7 and len(labels) == 7  # batches keep their size
                good = {f[2]: f[1] for f in files}
                for size, lab in zip(map(tuple, images.sizes.tolist()), labels.tolist()):
                    assert good[size] == lab  # every image is a good file, with its own label
    msgs = [str(w.message) for w in caught if issubclass(w.category, UnreadableImageWarning)]
    assert msgs and all(bad_name in m for m in msgs)
    assert len(msgs) == 1  # warned once per file, though read in both epochs
    assert b.bad.files and list(b.bad.files.values()) == [bad_name]
    assert b.bad.bad == 2 and b.bad.seen == 42  # counted in every epoch


def test_too_many_corrupt_files_stop_with_one_line(tmp_path) -> None:
    write_folder(tmp_path, n=10, corrupt=3)
    b = StreamBatches(FolderSource.scan(tmp_path), "cpu", batch_size=13, seed=0, workers=0, max_bad_fraction=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnreadableImageWarning)
        with pytest.raises(DataError) as e:
            list(b.epoch(0))
    msg = str(e.value)
    assert "\n" not in msg and "max_bad_fraction" in msg and "zz_bad" in msg


def test_bad_image_counter_rate_rule() -> None:
    c = BadImageCounter(total=100_000, max_fraction=0.01, min_seen=1000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnreadableImageWarning)
        c.update(500, [(i, f"f{i}", "x") for i in range(50)])  # 10% but too few reads to judge
        with pytest.raises(DataError, match="of the 1000 images read so far"):
            c.update(500, [(50, "f50", "x")])


def test_device_decoding_path_and_its_fallback(tmp_path) -> None:
    """The GPU path's logic on the CPU: JPEG bytes go to the main process and are decoded there in
    one batched call; a batch the batched decoder rejects is decoded image by image, the corrupt
    one is skipped. The result equals the worker-decoding path."""
    write_folder(tmp_path, n=14, corrupt=1)
    src = FolderSource.scan(tmp_path)
    calls = []

    def fake_device_decoder(raw, device):  # nvjpeg's behaviour: one bad image fails the batch
        calls.append(len(raw))
        return [decode_image_bytes(r).to(device) for r in raw]

    dev = StreamBatches(src, "cpu", batch_size=5, seed=2, workers=1, max_bad_fraction=0.2)
    dev.device_jpeg, dev.device_decoder = True, fake_device_decoder
    cpu = StreamBatches(src, "cpu", batch_size=5, seed=2, workers=1, max_bad_fraction=0.2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnreadableImageWarning)
        a, b = _collect(dev, 0), _collect(cpu, 0)
    assert all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) and torch.equal(x[2], y[2]) for x, y in zip(a, b))
    assert max(calls) > 1 and 1 in calls  # batched calls, and the one-by-one retry of the bad batch
    assert dev.bad.files == cpu.bad.files and len(dev.bad.files) == 1


# --------------------------------------------------------------------------------------------
# ragged crops


def _tv_boxes(n: int, h: int, w: int, scale, ratio, seed: int) -> np.ndarray:
    img = torch.zeros(1, h, w)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return np.array([RandomResizedCrop.get_params(img, list(scale), list(ratio)) for _ in range(n)])


def _fallback_box(h: int, w: int, ratio) -> tuple[int, int, int, int]:
    """torchvision's center-crop fallback: the whole image trimmed to the nearest allowed ratio."""
    r = w / h
    if r < ratio[0]:
        bw, bh = w, int(round(w / ratio[0]))
    elif r > ratio[1]:
        bw, bh = int(round(h * ratio[1])), h
    else:
        bw, bh = w, h
    return (h - bh) // 2, (w - bw) // 2, bh, bw


def test_ragged_crop_statistics_per_image_size() -> None:
    shapes = [(64, 64), (48, 96), (120, 30), (9, 200)]  # square, wide, tall, extreme: many fallbacks
    n_each = 1500
    hw = torch.tensor([s for s in shapes for _ in range(n_each)])
    hw = hw[torch.randperm(len(hw), generator=torch.Generator().manual_seed(0))]
    scale, ratio = (0.2, 1.0), (3 / 4, 4 / 3)
    aug = MultiViewAugment([ViewRecipe(size=8, scale=scale, ratio=ratio)], n_views=2)
    p = aug.sample_params(len(hw), hw[:, 0], hw[:, 1], torch.Generator().manual_seed(1))[1]
    box = torch.stack([p.top, p.left, p.height, p.width], 1)
    assert torch.equal(p.src_sizes, hw)
    # every box inside its own image
    assert (box[:, :2] >= 0).all() and (box[:, 2:] >= 1).all()
    assert (box[:, 0] + box[:, 2] <= hw[:, 0]).all() and (box[:, 1] + box[:, 3] <= hw[:, 1]).all()
    area = (box[:, 2] * box[:, 3]).double() / (hw[:, 0] * hw[:, 1]).double()
    assert torch.allclose(p.area_fraction, area)
    for shape in shapes:
        sel = (hw[:, 0] == shape[0]) & (hw[:, 1] == shape[1])
        ours = box[sel].numpy()
        ref = _tv_boxes(n_each, *shape, scale, ratio, seed=3)
        fb = np.array(_fallback_box(*shape, ratio))
        is_fb, ref_fb = (ours == fb).all(1), (ref == fb).all(1)
        # drawn boxes: area in scale and aspect w/h in ratio, up to the rounding of w and h (0.5 px)
        h, w = ours[~is_fb, 2].astype(float), ours[~is_fb, 3].astype(float)
        a = h * w / (shape[0] * shape[1])
        tol = (h + w + 1) / (shape[0] * shape[1])
        assert (a >= scale[0] - tol).all() and (a <= scale[1] + tol).all(), shape
        assert ((w - 0.5) / (h + 0.5) <= ratio[1]).all() and ((w + 0.5) / (h - 0.5) >= ratio[0]).all(), shape
        # the share of fallback boxes and the mean area: as torchvision's for an image of that size
        q = max(ref_fb.mean(), 1e-3)
        assert abs(is_fb.mean() - ref_fb.mean()) <= 4 * math.sqrt(2 * q * (1 - q) / n_each) + 1e-3, shape
        a_all = ours[:, 2] * ours[:, 3] / (shape[0] * shape[1])
        a_ref = ref[:, 2] * ref[:, 3] / (shape[0] * shape[1])
        se = math.sqrt((a_all.var() + a_ref.var()) / n_each)
        assert abs(a_all.mean() - a_ref.mean()) <= 4 * se + 1e-9, shape


def test_ragged_batch_of_equal_sizes_is_exactly_the_same_size_batch() -> None:
    x = torch.randint(0, 256, (12, 3, 30, 44), dtype=torch.uint8, generator=torch.Generator().manual_seed(4))
    for preset in ("simclr", "byol"):
        aug = build_augment(preset, 24)
        a = aug(x, torch.Generator().manual_seed(9))
        b = aug(RaggedImages.from_list(list(x)), torch.Generator().manual_seed(9))
        assert all(torch.equal(u, v) for u, v in zip(a, b)), preset
    aug.chunk_size = 5  # chunked on the CPU: same result
    c = aug(RaggedImages.from_list(list(x)), torch.Generator().manual_seed(9))
    assert all(torch.equal(u, v) for u, v in zip(a, c))


def test_ragged_crop_pixels_equal_torchvision_on_each_unpadded_image() -> None:
    g = torch.Generator().manual_seed(2)
    sizes = [(int(a), int(b)) for a, b in torch.randint(6, 70, (24, 2), generator=g)]
    imgs = [torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g) for h, w in sizes]
    batch = RaggedImages.from_list(imgs)
    aug = build_augment("none", 16, scale=(0.08, 1.0), flip_p=0.5)
    params = aug.sample_params(len(imgs), batch.sizes[:, 0], batch.sizes[:, 1], torch.Generator().manual_seed(5))
    out = aug.apply_params(batch, params)[0]
    p = params[0]
    for i, im in enumerate(imgs):
        ref = TF.resized_crop(im.float() / 255, int(p.top[i]), int(p.left[i]), int(p.height[i]), int(p.width[i]),
                              [16, 16], antialias=True)
        if p.flip[i]:
            ref = TF.horizontal_flip(ref)
        torch.testing.assert_close(out[i], (ref - 0.5) / 0.5, atol=2e-5, rtol=0)


def test_share_applies_the_global_draw_to_each_ranks_images() -> None:
    g = torch.Generator().manual_seed(8)
    imgs = [torch.randint(0, 256, (3, int(h), int(w)), dtype=torch.uint8, generator=g)
            for h, w in torch.randint(20, 50, (8, 2), generator=g)]
    aug = build_augment("simclr", 16)
    whole = aug(RaggedImages.from_list(imgs), torch.Generator().manual_seed(3))
    for rank in (0, 1):
        part = aug(RaggedImages.from_list(imgs[4 * rank : 4 * rank + 4]), torch.Generator().manual_seed(3),
                   share=(rank, 2))
        for v_all, v_part in zip(whole, part):
            assert torch.equal(v_all[4 * rank : 4 * rank + 4], v_part)


# --------------------------------------------------------------------------------------------
# the trainer


@pytest.fixture(scope="module")
def split_folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("splits")
    write_folder(root / "train", n=36, first_h=14)
    write_folder(root / "test", n=15, first_h=14)
    return root


TINY = ["backbone=tiny", "batch_size=16", "epochs=2", "method.proj_hidden_dim=32", "method.proj_output_dim=16",
        "eval.knn_k=5", "progress=false", "threads=1", "data.image_size=16", "diag.enabled=false",
        "eval.random_baseline=false", "eval.every=0"]


def test_streamed_folder_trains_and_resumes_exactly(split_folder, tmp_path) -> None:
    common = TINY + ["data=imagefolder", f"data.root={split_folder}", "data.stream=true", "data.workers=0",
                     f"out_dir={tmp_path}", "data.eval_images=20"]
    full = train(build_config(common + ["run_name=full", "data.workers=1"]), log=False)
    assert full.step == 4 and full.knn_accuracy is not None  # 36 images // 16 = 2 steps per epoch
    part = train(build_config(common + ["run_name=part", "stop_after=3"]), log=False)  # mid-epoch 2
    assert part.stopped_early and part.step == 3
    resumed = train(build_config(common + ["run_name=part", "resume=true"]), log=False)
    assert resumed.step == 4
    a, b = ck.load_checkpoint(full.run_dir / "latest.pt")["method"], ck.load_checkpoint(resumed.run_dir / "latest.pt")["method"]
    for k in a:
        assert torch.equal(a[k], b[k]), k
    t = Trainer(build_config(common + ["run_name=probe"]), log=False)
    assert isinstance(t.train_set, StreamedDataset) and len(t.train_set) == 36
    assert len(t.knn_train) <= 21 and t.knn_train.images.shape[1:] == (3, 16, 16)  # bounded, stratified
    assert len(t.knn_test) == 15 and t.knn_test.labels is not None


def test_shards_train_from_the_command_line(split_folder, tmp_path) -> None:
    from siamgrad.cli import main

    assert main(["data", "pack", str(split_folder), str(tmp_path / "sh"), "--shard-size", "10"]) == 0
    cfg = build_config(TINY + ["data=shards", f"data.root={tmp_path / 'sh'}", "data.workers=0",
                               f"out_dir={tmp_path}", "run_name=s", "epochs=1"])
    ds = load_train_set(cfg.data)
    assert isinstance(ds, StreamedDataset) and len(ds) == 36 and ds.classes == list(CLASSES)
    res = train(cfg, log=False)
    assert res.step == 2 and res.knn_accuracy is not None
    # `siamgrad eval knn` on the shards run: the trainer's labeled subsets, the same figure
    from siamgrad.eval.checkpoint import evaluate_checkpoint

    out = evaluate_checkpoint("knn", str(res.run_dir / "latest.pt"), ["data.workers=0"])
    assert out["knn_top1"] == pytest.approx(res.knn_accuracy, abs=1e-6)
    assert main(["eval", "knn", str(res.run_dir), "data.workers=0"]) == 0
