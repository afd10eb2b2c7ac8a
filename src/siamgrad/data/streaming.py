"""Streaming: batches read from disk by worker processes while the model trains.

Nothing holds more than a source's index (:mod:`siamgrad.data.sources`) and the batches in
flight. :class:`StreamBatches` is the streaming twin of
:class:`~siamgrad.data.batches.InMemoryBatches`; :class:`StreamedDataset` is a streamed set as
the trainer sees it.

Epoch order, ranks and workers
------------------------------
The order of epoch ``e`` is the source's (:meth:`~siamgrad.data.sources.Source.order`, from
``(seed, e)``). It is cut into global batches of ``batch_size``; process ``rank`` of ``world``
takes entries ``[rank B / world, (rank + 1) B / world)`` of every global batch (the convention
of ``InMemoryBatches``) and its DataLoader workers read whole local batches (worker ``w`` of
``W`` reads steps ``w, w + W, ...``). So over ranks x workers every sample of the epoch is read
exactly once, and step ``s`` of epoch ``e`` is known from ``(seed, e, s)`` alone: a run resumed
mid-epoch reads exactly the remaining batches. As in memory, the last ``N mod batch_size``
samples of an epoch's order are left out of training (different ones every epoch);
``drop_last=False`` yields them as a short batch.

Decoding
--------
Workers read the raw bytes. On a CUDA device JPEGs are decoded there, a batch at a time
(:func:`~siamgrad.data.decode.decode_jpegs_on_device`, nvjpeg), while other formats (PNG, ...)
are decoded in the workers; on a CPU device the workers decode everything
(:func:`~siamgrad.data.decode.decode_image_bytes`). An image whose longer side exceeds
``max_side`` is scaled down (aspect kept, antialiased) right after decoding, which bounds the
padded batch. A file that cannot be read or decoded is skipped: its place in the batch is
taken by the next good image of the same batch (batches keep their size, which the objectives
need across processes), and :class:`~siamgrad.data.bad_images.BadImageCounter` names it and
stops once the unreadable share exceeds ``max_bad_fraction``.

The batches are :class:`~siamgrad.augment.ragged.RaggedImages` (padded, with per-image
sizes) on the training device; :class:`~siamgrad.augment.multiview.MultiViewAugment` crops each
straight to the output size in one batched resampling per view.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from siamgrad.augment.ragged import RaggedImages
from siamgrad.data.bad_images import DEFAULT_MAX_BAD_FRACTION, BadImageCounter
from siamgrad.data.decode import JPEG_MAGIC, cap_side, decode_image_bytes, decode_jpegs_on_device, one_line
from siamgrad.data.in_memory import ImageDataset, load_in_memory, stratified_sample
from siamgrad.data.sources import Source
from siamgrad.data.workers import auto_workers, pass_through, worker_init
from siamgrad.errors import ConfigError, DataError

__all__ = ["SAMPLE_IMAGES", "StreamBatches", "StreamedDataset"]

SAMPLE_IMAGES = 512
"""Images of the fixed in-memory sample of a streamed set (channel statistics, diagnostics)."""


@dataclass
class _Payload:
    """What a worker hands over for one local batch (see :meth:`StreamBatches._finish`).

    ``decoded``: the images decoded in the worker, in batch order, at positions ``dec_pos``;
    ``raw``: the concatenated bytes of the JPEGs left for the device, ``raw_len`` their lengths,
    at positions ``raw_pos``; ``failed``: ``(position, reason)`` of the unreadable ones.
    """

    step: int
    indices: np.ndarray
    decoded: RaggedImages | None = None
    dec_pos: list[int] = field(default_factory=list)
    raw: torch.Tensor | None = None
    raw_len: list[int] = field(default_factory=list)
    raw_pos: list[int] = field(default_factory=list)
    failed: list[tuple[int, str]] = field(default_factory=list)

    def pin_memory(self) -> _Payload:
        if self.decoded is not None:
            self.decoded = self.decoded.pin_memory()
        if self.raw is not None:
            self.raw = self.raw.pin_memory()
        return self


class _StepReader(torch.utils.data.Dataset):
    """Map-style dataset over the steps of one epoch: item ``s`` is step ``s``'s local batch."""

    def __init__(self, source: Source, steps: list[np.ndarray], device_jpeg: bool, max_side: int | None):
        self.source, self.steps = source, steps
        self.device_jpeg, self.max_side = device_jpeg, max_side

    def __len__(self) -> int:
        return len(self.steps)

    def __getitem__(self, step: int) -> _Payload:
        idx = self.steps[step]
        pay = _Payload(step=step, indices=idx)
        images: list[torch.Tensor] = []
        raw: list[bytes] = []
        for pos, i in enumerate(idx.tolist()):
            try:
                data = self.source.read(i)
            except OSError as e:
                pay.failed.append((pos, f"cannot read: {one_line(e.strerror or str(e))}"))
                continue
            if self.device_jpeg and data[:3] == JPEG_MAGIC:
                raw.append(data)
                pay.raw_pos.append(pos)
                continue
            try:
                images.append(decode_image_bytes(data, self.max_side))
                pay.dec_pos.append(pos)
            except ValueError as e:
                pay.failed.append((pos, str(e)))
        if images:
            pay.decoded = RaggedImages.from_list(images)
        if raw:
            pay.raw_len = [len(r) for r in raw]
            pay.raw = torch.frombuffer(bytearray(b"".join(raw)), dtype=torch.uint8)
        return pay


class _ThreadPrefetch:
    """Run ``fn`` on the items of ``items`` one step ahead in a background thread.

    On CUDA the work runs on a side stream; the consumer's stream waits for it and the yielded
    tensors are recorded on the consumer's stream (safe reuse by the caching allocator).
    """

    _END = object()

    def __init__(self, items: Iterator[Any], fn: Callable[[Any], tuple], device: torch.device, depth: int = 2):
        self.items, self.fn, self.device = items, fn, device
        self.q: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self.stop = threading.Event()
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _put(self, item: Any) -> bool:
        while not self.stop.is_set():
            try:
                self.q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            for item in self.items:
                if self.stop.is_set():
                    break
                if self.stream is not None:
                    with torch.cuda.stream(self.stream):
                        out = self.fn(item)
                        event = self.stream.record_event()
                else:
                    out, event = self.fn(item), None
                if not self._put((out, event)):
                    break
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            self._put(e)
        finally:
            self._put(self._END)

    def __iter__(self) -> Iterator[tuple]:
        try:
            while True:
                item = self.q.get()
                if item is self._END:
                    return
                if isinstance(item, BaseException):
                    raise item
                (images, labels), event = item
                if event is not None:
                    current = torch.cuda.current_stream(self.device)
                    current.wait_event(event)
                    images.data.record_stream(current)
                    if labels is not None:
                        labels.record_stream(current)
                yield images, labels
        finally:
            self.close()

    def close(self) -> None:
        self.stop.set()
        while self.thread.is_alive():
            try:
                self.q.get(timeout=0.1)
            except queue.Empty:
                pass
        self.thread.join()


class StreamBatches:
    """Batches of a streamed source, on the device: the streaming twin of ``InMemoryBatches``.

    ``len()`` is the number of steps per epoch; ``epoch(e, start)`` yields ``(images, labels)``
    for steps ``start..len-1`` of epoch ``e``: ``images`` a :class:`RaggedImages` on ``device``
    with ``batch_size / world`` images, ``labels`` int64 on ``device`` (``None`` unlabeled).
    See the module docstring for the order, the rank/worker split and decoding.

    Args:
        workers: DataLoader worker processes reading (and on CPU decoding) batches; 0 reads in
            this process; ``None``: ``min(16, cores per process - 1)``, at least 1.
        decode: ``"auto"`` (JPEGs on the device when it is CUDA, else in the workers),
            ``"device"`` or ``"cpu"``.
        thread: finish batches (device decoding, padding, copy) one step ahead in a
            background thread; default: on CUDA.
    """

    def __init__(self, source: Source, device: torch.device | str, batch_size: int, seed: int, *,
                 rank: int = 0, world: int = 1, workers: int | None = None, decode: str = "auto",
                 shuffle_buffer: int = 10_000, max_bad_fraction: float = DEFAULT_MAX_BAD_FRACTION, max_side: int | None = 512,
                 drop_last: bool = True, prefetch: int = 2, thread: bool | None = None):
        if world < 1 or not 0 <= rank < world:
            raise ConfigError(f"rank {rank} of {world} processes is not valid")
        if batch_size % world:
            raise ConfigError(f"batch_size={batch_size} is not divisible by the {world} processes; "
                              "make it a multiple of the number of processes")
        self.source = source
        self.n = len(source)
        if drop_last and batch_size > self.n:
            raise ConfigError(f"batch_size={batch_size} is larger than the training set ({self.n} images); "
                              "lower batch_size")
        if decode not in ("auto", "cpu", "device"):
            raise ConfigError(f"data.decode: {decode!r} is not valid; choose auto, cpu or device")
        self.device = torch.device(device)
        self.batch_size, self.seed, self.rank, self.world = batch_size, seed, rank, world
        self.local = batch_size // world
        self.workers = auto_workers(world) if workers is None else int(workers)
        self.device_jpeg = self.device.type == "cuda" and decode in ("auto", "device")
        self.shuffle_buffer, self.max_side = int(shuffle_buffer), max_side
        self.drop_last, self.prefetch = drop_last, max(1, int(prefetch))
        self.thread = self.device.type == "cuda" if thread is None else bool(thread)
        self.steps_per_epoch = self.n // batch_size if drop_last else -(-self.n // batch_size)
        self.bad = BadImageCounter(self.n, max_bad_fraction)
        self.device_decoder: Callable[[Sequence[torch.Tensor], torch.device], list[torch.Tensor]] = \
            decode_jpegs_on_device
        self._order_cache: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:
        return self.steps_per_epoch

    def order(self, epoch: int) -> np.ndarray:
        """The global order of ``epoch`` (cached for the current epoch)."""
        if self._order_cache is None or self._order_cache[0] != epoch:
            self._order_cache = (epoch, self.source.order(self.seed, epoch, self.shuffle_buffer))
        return self._order_cache[1]

    def local_indices(self, epoch: int, step: int) -> np.ndarray:
        """Dataset indices this rank reads at ``step`` of ``epoch`` (entries ``[r m / W, (r+1) m / W)``
        of the global batch of ``m`` samples)."""
        order = self.order(epoch)
        lo = step * self.batch_size
        m = min(self.batch_size, self.n - lo)
        a, b = (self.rank * m) // self.world, ((self.rank + 1) * m) // self.world
        return order[lo + a : lo + b]

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[RaggedImages, torch.Tensor | None]]:
        """Yield ``(images, labels)`` for the steps ``start..len-1`` of ``epoch``, on the device."""
        steps = [self.local_indices(epoch, s) for s in range(self.steps_per_epoch)]
        reader = _StepReader(self.source, steps, self.device_jpeg, self.max_side)
        todo = [s for s in range(start, self.steps_per_epoch) if len(steps[s])]
        if self.workers == 0 or len(todo) == 0:
            payloads: Iterator[_Payload] = (reader[s] for s in todo)
            loader = None
        else:
            loader = torch.utils.data.DataLoader(
                reader, batch_size=None, sampler=todo, num_workers=min(self.workers, len(todo)),
                collate_fn=pass_through, pin_memory=self.device.type == "cuda", prefetch_factor=self.prefetch,
                worker_init_fn=worker_init, persistent_workers=False,
            )
            payloads = iter(loader)
        it: Iterator[tuple] = (_ThreadPrefetch(payloads, self._finish, self.device) if self.thread
                               else (self._finish(p) for p in payloads))
        try:
            yield from it
        finally:
            if isinstance(it, _ThreadPrefetch):
                it.close()
            del payloads, loader

    # -- the main-process half of a batch

    def _decode_raw(self, pay: _Payload) -> tuple[list[torch.Tensor | None], list[str]]:
        """Decode the payload's JPEG bytes on the device: batched, then one by one if that fails
        (nvjpeg, then the CPU decoders); ``None`` and a reason for an unreadable one."""
        chunks = list(pay.raw.split(pay.raw_len)) if pay.raw is not None else []
        try:
            out: list[torch.Tensor | None] = list(self.device_decoder(chunks, self.device))
            if len(out) != len(chunks):
                raise RuntimeError("decoder returned a wrong number of images")
            return [cap_side(x, self.max_side) for x in out], [""] * len(chunks)
        except Exception:  # noqa: BLE001 - find the culprit(s) one by one
            pass
        out, reasons = [], []
        for c in chunks:
            try:
                img = self.device_decoder([c], self.device)[0]
                out.append(cap_side(img, self.max_side))
                reasons.append("")
                continue
            except Exception:  # noqa: BLE001
                pass
            try:
                out.append(decode_image_bytes(c, self.max_side).to(self.device))
                reasons.append("")
            except ValueError as e:
                out.append(None)
                reasons.append(str(e))
        return out, reasons

    def _count(self, pay: _Payload, n: int, failed: list[tuple[int, str]]) -> None:
        names = [(int(pay.indices[p]), self.source.describe(int(pay.indices[p])), why) for p, why in failed]
        self.bad.update(n, names)

    def _finish(self, pay: _Payload) -> tuple[RaggedImages, torch.Tensor | None]:
        n = len(pay.indices)
        failed = list(pay.failed)
        if pay.raw is None and not failed and pay.decoded is not None:  # decoded in the worker, all good
            images = pay.decoded.to(self.device, non_blocking=True)
            source_rows = np.arange(n)
        else:
            slot: list[torch.Tensor | None] = [None] * n
            if pay.decoded is not None:
                dec = pay.decoded.to(self.device, non_blocking=True)
                for row, pos in enumerate(pay.dec_pos):
                    slot[pos] = dec.image(row)
            if pay.raw is not None:
                imgs, reasons = self._decode_raw(pay)
                for pos, img, why in zip(pay.raw_pos, imgs, reasons):
                    slot[pos] = img
                    if img is None:
                        failed.append((pos, why))
            good = [p for p in range(n) if slot[p] is not None]
            if not good:
                self._count(pay, n, failed)
                names = ", ".join(self.source.describe(int(pay.indices[p])) for p, _ in failed[:3])
                raise DataError(f"no image of a batch could be decoded, e.g. {names}; check the data files")
            # an unreadable image's place goes to the next good image of the batch (cyclically)
            source_rows = np.empty(n, dtype=np.int64)
            nxt = good[0]
            for p in range(n - 1, -1, -1):
                if slot[p] is not None:
                    nxt = p
                source_rows[p] = nxt
            images = RaggedImages.from_list([slot[int(p)] for p in source_rows], device=self.device)
        self._count(pay, n, failed)
        labels = None
        if self.source.labels is not None:
            labels = self.source.labels[torch.from_numpy(pay.indices[source_rows])].to(self.device, non_blocking=True)
        return images, labels


class StreamedDataset:
    """A streamed training set as the trainer sees it (the attributes it reads of an
    :class:`~siamgrad.data.in_memory.ImageDataset`).

    ``labels``/``classes``/``len()`` cover the whole set; ``image_size`` is the output and
    evaluation size (``data.image_size``, default 64): images are never resized ahead, the
    random crops are taken from the decoded images. ``images`` is *not* the set: it is a fixed
    random sample of at most :data:`SAMPLE_IMAGES` images at ``image_size``, loaded on first use
    (channel statistics, the diagnostics batch).
    """

    def __init__(self, source: Source, image_size: int, workers: int | None = None, seed: int = 0,
                 max_bad_fraction: float = DEFAULT_MAX_BAD_FRACTION):
        self.source, self.name = source, source.name
        self._image_size, self.workers, self.seed = int(image_size), workers, seed
        self.max_bad_fraction = float(max_bad_fraction)
        self._sample: ImageDataset | None = None

    def __len__(self) -> int:
        return len(self.source)

    @property
    def labels(self) -> torch.Tensor | None:
        return self.source.labels

    @property
    def classes(self) -> list[str]:
        return self.source.classes

    @property
    def image_size(self) -> int:
        return self._image_size

    def sample(self) -> ImageDataset:
        """A fixed random sample (seeded) of ``min(SAMPLE_IMAGES, N)`` images in memory at
        ``image_size`` (unreadable ones left out), loaded once."""
        if self._sample is None:
            k = min(SAMPLE_IMAGES, len(self))
            g = torch.Generator().manual_seed(self.seed + 4_242)
            idx = torch.sort(torch.randperm(len(self), generator=g)[:k]).values.numpy()
            self._sample = load_in_memory(self.source, idx, self.image_size, self.workers, self.max_bad_fraction)
        return self._sample

    @property
    def images(self) -> torch.Tensor:
        return self.sample().images

    def fraction(self, frac: float, seed: int = 0) -> StreamedDataset:
        """A class-stratified subset of about ``frac`` of the set (the rule of
        :meth:`~siamgrad.data.in_memory.ImageDataset.fraction`)."""
        if isinstance(frac, bool) or not 0.0 < float(frac) <= 1.0:
            raise ConfigError(f"data fraction must be in (0, 1], got {frac!r}; e.g. data.fraction=0.5")
        if float(frac) == 1.0:
            return self
        idx = stratified_sample(self.labels, len(self), float(frac), seed).numpy()
        return StreamedDataset(self.source.subset(idx), self.image_size, self.workers, self.seed, self.max_bad_fraction)

    def load(self, indices: np.ndarray | None = None, size: int | None = None) -> ImageDataset:
        """Samples ``indices`` (all when ``None``) in memory at ``size`` (default ``image_size``)."""
        return load_in_memory(self.source, indices, size or self.image_size, self.workers, self.max_bad_fraction)
