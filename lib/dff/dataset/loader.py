"""Training data: roidb entries -> network inputs, and the reference's aspect-grouped shuffling.

:class:`TrainDataset` is indexed by ``(epoch, index)`` keys (``index`` into the roidb), so every random
choice of a sample (DFF's key frame, the scale when several are configured) is drawn from an RNG seeded
by ``(seed, epoch, index)``: the same sample is produced whatever the worker, the process count or the
point where a run was resumed.

:class:`AspectGroupedBatchSampler` reproduces the reference's ``AnchorLoader.reset`` order (docs/design.md §5.3):
landscape (w >= h) and portrait indices are permuted separately and concatenated, the list is cut into
chunks of the *global* batch (4 GPUs x 1 image in the reference) and the chunks are permuted; an
incomplete last chunk is dropped. **QUIRK**: when the roidb size is an exact multiple of the batch the
reference's chunk shuffle is an empty slice (``inds[:-0]``), so every epoch runs all landscape images
before all portrait ones. That is reproduced with ``reference_quirk=True``; the default is the FIXED
behaviour (chunks are always permuted). Each process takes its slice of each global batch
(``per_rank`` images, rank-major), so ``world_size`` processes x ``per_rank`` images see exactly the
images of one global batch.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Iterator, Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from dff.dataset.cityscapes import CityscapesError, read_label
from dff.dataset.imagenet_vid import ref_image_path, sample_key_frame, sample_previous_key
from dff.temporal import build_scheme
from dff.utils.image import ImageReadError, read_image, resize, transform

__all__ = [
    "derive_seed", "sample_rng", "BadSample", "TrainDataset", "SegTrainDataset", "TRAIN_DATASETS", "epoch_order", "AspectGroupedBatchSampler",
    "list_collate", "worker_init",
]

# stream tags: independent random streams drawn from the same (seed, epoch, index)
STREAM_DATA = 0
STREAM_TARGETS = 1


def derive_seed(seed: int, epoch: int, index: int, stream: int) -> int:
    """A 63-bit seed from ``(seed, epoch, index, stream)`` (NumPy ``SeedSequence`` mixing)."""
    ss = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(epoch), int(index), int(stream)])
    return int(ss.generate_state(1, np.uint64)[0] >> np.uint64(1))


def sample_rng(seed: int, epoch: int, index: int, stream: int = STREAM_DATA) -> np.random.Generator:
    """The NumPy generator of one sample (e.g. DFF's key-frame offset)."""
    return np.random.Generator(np.random.PCG64(derive_seed(seed, epoch, index, stream)))


@dataclasses.dataclass
class BadSample:
    """A sample that could not be loaded (unreadable image): reported and skipped by the trainer."""
    epoch: int
    index: int
    path: str
    message: str


def _clip_boxes(boxes: np.ndarray, height: float, width: float) -> np.ndarray:
    """The reference's ``clip_boxes``: x into [0, W-1], y into [0, H-1]."""
    boxes[:, 0::2] = np.maximum(np.minimum(boxes[:, 0::2], width - 1), 0)
    boxes[:, 1::2] = np.maximum(np.minimum(boxes[:, 1::2], height - 1), 0)
    return boxes


def _read_failure(epoch: int, index: int, path: str, error: Exception) -> BadSample:
    """A sample whose file ``path`` could not be read: its message without the path it starts with."""
    message = str(error)
    if message.startswith(path + ": "):
        message = message[len(path) + 2:]
    return BadSample(epoch, index, path, message)


class TrainDataset(Dataset):
    """roidb entries -> training inputs, as the reference's ``get_image`` / ``get_pair_image``.

    Args:
        roidb: training roidb (``ImageNetVID.train_roidb()``).
        cfg: the config (``SCALES``, ``network.PIXEL_MEANS``, ``network.IMAGE_STRIDE``,
            ``TRAIN.MIN_OFFSET``/``MAX_OFFSET``).
        pairs: DFF mode: also load the key (reference) frame and ``eq_flag``.
        seed: base seed of the per-sample RNGs.

    ``dataset[(epoch, index)]`` returns a dict (or a :class:`BadSample`):

    * ``data`` (1, 3, H, W) float32: the loss-carrying frame, flipped if the entry is, resized, RGB minus means;
    * ``im_info`` (1, 3) float32 ``[H, W, scale]``;
    * ``gt_boxes`` (G, 5) float32 ``[x1, y1, x2, y2, cls]`` in scaled-image pixels. The baseline rounds
      them (``np.round``, half to even) and clips them to the scaled image; DFF only multiplies by the
      scale (docs/design.md §5.2 **QUIRK**, kept per model);
    * DFF only: ``data_ref`` (1, 3, H, W) the key frame (the image itself for DET entries) and
      ``eq_flag`` (int, 1 when the key frame is the current frame);
    * for a scheme that aggregates key frames (``trains_on_previous_key``: thp, gru): ``data_prev`` (P, 3, H, W) the earlier
      key frames, newest first: the first drawn at ``TRAIN.THP_PREV_KEY_MIN_OFFSET..MAX_OFFSET`` from the key frame,
      each next one as far from the one before, up to ``TRAIN.THP_PREV_KEYS`` of them (fewer where the chain
      reaches the video's start), and ``prev_flag`` (int, 1 when there is none: a DET entry or the video's
      start; ``data_prev`` is then the key frame, P = 1); with ``TRAIN.STATIC_CLIPS`` a DET entry is a static clip
      instead: ``prev_flag`` 0, ``data_prev`` the image (P = 1) and ``static_keys`` = ``THP_PREV_KEYS``, the
      number of earlier key frames that are copies of it;
    * ``epoch``, ``index``, ``image`` (path), ``ref_image`` (DFF: key-frame path).
    """

    def __init__(self, roidb: Sequence[dict[str, Any]], cfg: Any, pairs: bool, seed: int = 0) -> None:
        self.roidb = roidb
        self.pairs = pairs
        self.seed = int(seed)
        self.scales = [tuple(int(v) for v in s) for s in cfg.SCALES]
        self.pixel_means = list(cfg.network.PIXEL_MEANS)
        self.stride = int(cfg.network.IMAGE_STRIDE)
        self.min_offset = int(cfg.TRAIN.MIN_OFFSET)
        self.max_offset = int(cfg.TRAIN.MAX_OFFSET)
        self.prev_keys = pairs and build_scheme(cfg).trains_on_previous_key
        self.prev_offsets = (int(cfg.TRAIN.THP_PREV_KEY_MIN_OFFSET), int(cfg.TRAIN.THP_PREV_KEY_MAX_OFFSET))
        self.n_prev = int(cfg.TRAIN.THP_PREV_KEYS)
        self.static_clips = bool(cfg.TRAIN.STATIC_CLIPS)
        if self.prev_keys and self.n_prev < 1:
            raise ValueError(f"TRAIN.THP_PREV_KEYS must be >= 1, got {self.n_prev}")

    def __len__(self) -> int:
        return len(self.roidb)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any] | BadSample:
        epoch, index = int(key[0]), int(key[1])
        rec = self.roidb[index]
        rng = sample_rng(self.seed, epoch, index, STREAM_DATA)
        # draw in a fixed order (key frame, then scale) so a sample never depends on which draws happen
        ref_id, eq_flag = sample_key_frame(rec, rng, self.min_offset, self.max_offset) if self.pairs else (None, 1)
        target_size, max_size = self.scales[int(rng.integers(len(self.scales)))]
        # THP's previous key frame: drawn after the scale, so a DFF sample's draws are unchanged
        prev_ids = self._previous_keys(rec, ref_id, rng) if self.prev_keys else []
        path = rec["image"]
        ref_path = ref_image_path(rec, ref_id) if self.pairs else path
        prev_paths = [ref_image_path(rec, i) for i in prev_ids]
        trying = path
        try:
            im = read_image(path)
            ref = None
            prevs: list[np.ndarray] = []
            if self.pairs:
                # DET entries (no video) and offset 0 use the current frame itself as the key frame
                trying = ref_path
                ref = im if ref_path == path else read_image(ref_path)
            for prev_path in prev_paths:
                trying = prev_path
                prevs.append(read_image(prev_path))
        except ImageReadError as e:
            return _read_failure(epoch, index, trying, e)
        if rec["flipped"]:
            im = im[:, ::-1, :]
            if ref is not None:
                ref = ref[:, ::-1, :]
            prevs = [p[:, ::-1, :] for p in prevs]
        im_resized, scale = resize(im, target_size, max_size, self.stride)
        data = transform(im_resized, self.pixel_means)
        height, width = data.shape[2], data.shape[3]
        boxes = rec["boxes"].astype(np.float64) * scale
        if not self.pairs:
            boxes = _clip_boxes(np.round(boxes), height, width)
        gt_boxes = np.empty((len(boxes), 5), dtype=np.float32)
        gt_boxes[:, :4] = boxes
        gt_boxes[:, 4] = rec["gt_classes"]
        out: dict[str, Any] = {
            "data": torch.from_numpy(data),
            "im_info": torch.tensor([[height, width, scale]], dtype=torch.float32),
            "gt_boxes": torch.from_numpy(gt_boxes),
            "epoch": epoch,
            "index": index,
            "image": path,
        }
        if self.pairs:
            assert ref is not None
            if ref is im:
                out["data_ref"] = out["data"].clone()
            else:
                ref_resized, _ = resize(ref, target_size, max_size, self.stride)
                if ref_resized.shape != im_resized.shape:
                    return BadSample(epoch, index, ref_path,
                                     f"key frame is {ref.shape[1]}x{ref.shape[0]}, the current frame "
                                     f"{im.shape[1]}x{im.shape[0]}: frames of a video must have one size")
                out["data_ref"] = torch.from_numpy(transform(ref_resized, self.pixel_means))
            out["eq_flag"] = int(eq_flag)
            out["ref_image"] = ref_path
        if self.prev_keys:
            # no earlier key frame (a DET entry, the video's start): the key frame stands in, flagged; a DET
            # entry of a static-clip recipe is a chain of copies of itself (computed once by the scheme)
            static = self.static_clips and "frame_seg_len" not in rec
            out["prev_flag"] = int(not prev_ids and not static)
            if static:
                out["static_keys"] = self.n_prev
            if not prev_ids:
                out["data_prev"] = out["data_ref"]
            else:
                data_prev = []
                for prev_path, prev in zip(prev_paths, prevs):
                    prev_resized, _ = resize(prev, target_size, max_size, self.stride)
                    if prev_resized.shape != im_resized.shape:
                        return BadSample(epoch, index, prev_path, "previous key frame: frames of a video must have one size")
                    data_prev.append(transform(prev_resized, self.pixel_means))
                out["data_prev"] = torch.from_numpy(np.concatenate(data_prev))
        return out

    def _previous_keys(self, rec: dict[str, Any], ref_id: int | None, rng: np.random.Generator) -> list[int]:
        """The chain of earlier key frames (newest first), up to ``TRAIN.THP_PREV_KEYS``; it stops where a draw
        lands on the frame before it (the video's start). Empty for a DET entry or when the first draw is the key
        frame. The first draw is the one a single previous key frame always had, so THP_PREV_KEYS 1 samples as
        before."""
        chain: list[int] = []
        last = ref_id
        for _ in range(self.n_prev):
            prev = sample_previous_key(rec, last, rng, *self.prev_offsets)
            if prev is None or prev == last:
                break
            chain.append(prev)
            last = prev
        return chain


class SegTrainDataset(TrainDataset):
    """Segmentation roidb entries (:meth:`dff.dataset.cityscapes.CityscapesVideo.train_roidb`) -> training inputs.

    The key frame, the scale and the flip are drawn as :class:`TrainDataset` draws them (the same
    ``(seed, epoch, index)`` streams); the sample carries ``label`` (1, H, W) int64 class indices of the
    resized frame (nearest neighbour; 255 ignored) instead of ``gt_boxes``, plus ``data``, ``im_info`` and,
    for DFF, ``data_ref`` / ``eq_flag`` / ``ref_image``. Unreadable frames or labels give a :class:`BadSample`.
    """

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any] | BadSample:
        epoch, index = int(key[0]), int(key[1])
        rec = self.roidb[index]
        rng = sample_rng(self.seed, epoch, index, STREAM_DATA)
        ref_id, eq_flag = sample_key_frame(rec, rng, self.min_offset, self.max_offset) if self.pairs else (None, 1)
        target_size, max_size = self.scales[int(rng.integers(len(self.scales)))]
        path = rec["image"]
        ref_path = ref_image_path(rec, ref_id) if self.pairs else path
        trying = path
        try:
            im = read_image(path)
            trying = rec["label"]
            label = read_label(rec["label"], offset=int(rec["label_offset"]), num_classes=int(rec["num_classes"]))
            trying = ref_path
            ref = im if ref_path == path else read_image(ref_path)
        except (ImageReadError, CityscapesError) as e:
            return _read_failure(epoch, index, trying, e)
        if label.shape != im.shape[:2]:
            return BadSample(epoch, index, rec["label"], f"label is {label.shape[1]}x{label.shape[0]}, its frame "
                                                         f"{im.shape[1]}x{im.shape[0]}")
        if rec["flipped"]:
            im, ref, label = im[:, ::-1, :], ref[:, ::-1, :], label[:, ::-1]
        im_resized, scale = resize(im, target_size, max_size, self.stride)
        height, width = im_resized.shape[:2]
        label_resized = cv2.resize(np.ascontiguousarray(label.astype(np.uint8)), (width, height),
                                   interpolation=cv2.INTER_NEAREST)
        out: dict[str, Any] = {
            "data": torch.from_numpy(transform(im_resized, self.pixel_means)),
            "im_info": torch.tensor([[height, width, scale]], dtype=torch.float32),
            "label": torch.from_numpy(label_resized.astype(np.int64))[None],
            "epoch": epoch, "index": index, "image": path,
        }
        if self.pairs:
            if ref is im:
                out["data_ref"] = out["data"].clone()
            else:
                ref_resized, _ = resize(np.ascontiguousarray(ref), target_size, max_size, self.stride)
                if ref_resized.shape != im_resized.shape:
                    return BadSample(epoch, index, ref_path, "frames of a video must have one size")
                out["data_ref"] = torch.from_numpy(transform(ref_resized, self.pixel_means))
            out["eq_flag"] = int(eq_flag)
            out["ref_image"] = ref_path
        return out


# the training inputs of each task (the model's ``task``)
TRAIN_DATASETS: dict[str, type[TrainDataset]] = {"det": TrainDataset, "seg": SegTrainDataset}


def epoch_order(widths: np.ndarray, heights: np.ndarray, batch: int, seed: int, epoch: int,
                shuffle: bool = True, aspect_grouping: bool = True, reference_quirk: bool = False) -> np.ndarray:
    """The roidb indices of one epoch in the reference's order (its last ``len % batch`` are never used).

    With ``shuffle`` and ``aspect_grouping``: permute landscape (w >= h) and portrait indices separately,
    concatenate, cut into chunks of ``batch`` and permute the chunks (an incomplete tail stays last).
    ``reference_quirk`` skips the chunk permutation when ``len % batch == 0``, as the reference does.
    Without ``aspect_grouping`` a plain permutation; without ``shuffle`` ``0 .. N-1``.
    """
    n = len(widths)
    if not shuffle:
        return np.arange(n)
    rng = np.random.Generator(np.random.PCG64(derive_seed(seed, epoch, 0, 2)))
    if not aspect_grouping:
        return rng.permutation(n)
    horz = np.asarray(widths) >= np.asarray(heights)
    inds = np.hstack((rng.permutation(np.flatnonzero(horz)), rng.permutation(np.flatnonzero(~horz)))).astype(np.int64)
    extra = n % batch
    if extra == 0 and reference_quirk:
        return inds
    body = n - extra
    chunks = inds[:body].reshape(-1, batch)
    inds[:body] = chunks[rng.permutation(chunks.shape[0])].reshape(-1)
    return inds


class AspectGroupedBatchSampler(Sampler[list[tuple[int, int]]]):
    """Yields, per global batch, this process's ``per_rank`` keys ``(epoch, roidb index)``.

    Args:
        widths, heights: image sizes of the roidb entries (aspect grouping).
        per_rank: images per process per step (1, or K with ``--accumulate K``).
        world_size, rank: the distributed layout; the global batch is ``per_rank * world_size``.
        seed: order seed; the order of epoch e depends only on ``(seed, e)``.
        start_batch: global batches of the current epoch already done (mid-epoch resume).
    """

    def __init__(self, widths: Sequence[float], heights: Sequence[float], per_rank: int = 1, world_size: int = 1,
                 rank: int = 0, seed: int = 0, shuffle: bool = True, aspect_grouping: bool = True,
                 reference_quirk: bool = False, epoch: int = 0, start_batch: int = 0) -> None:
        if per_rank < 1 or world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"sampler: per_rank={per_rank}, world_size={world_size}, rank={rank} are invalid")
        self.widths = np.asarray(widths, dtype=np.float64)
        self.heights = np.asarray(heights, dtype=np.float64)
        self.per_rank = per_rank
        self.world_size = world_size
        self.rank = rank
        self.global_batch = per_rank * world_size
        self.seed = seed
        self.shuffle = shuffle
        self.aspect_grouping = aspect_grouping
        self.reference_quirk = reference_quirk
        if len(self.widths) < self.global_batch:
            raise ValueError(f"sampler: {len(self.widths)} training images, fewer than one global batch "
                             f"({self.global_batch}); nothing to train on")
        self.set_epoch(epoch, start_batch)

    @property
    def batches_per_epoch(self) -> int:
        return len(self.widths) // self.global_batch

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        if not 0 <= start_batch <= self.batches_per_epoch:
            raise ValueError(f"sampler: start_batch {start_batch} outside 0..{self.batches_per_epoch}")
        self.epoch = int(epoch)
        self.start_batch = int(start_batch)

    def order(self) -> np.ndarray:
        return epoch_order(self.widths, self.heights, self.global_batch, self.seed, self.epoch, self.shuffle,
                           self.aspect_grouping, self.reference_quirk)

    def __len__(self) -> int:
        return self.batches_per_epoch - self.start_batch

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        order = self.order()
        lo = self.rank * self.per_rank
        for b in range(self.start_batch, self.batches_per_epoch):
            chunk = order[b * self.global_batch + lo: b * self.global_batch + lo + self.per_rank]
            yield [(self.epoch, int(i)) for i in chunk]


def list_collate(samples: list[Any]) -> list[Any]:
    """Keep a step's samples as a list: images have different sizes and are run one at a time."""
    return samples


def worker_init(_: int) -> None:
    """DataLoader worker setup: one OpenCV thread per worker (the workers are the parallelism)."""
    try:
        cv2.setNumThreads(1)
    except Exception:  # pragma: no cover - OpenCV is a dependency; never fail a worker over threads
        pass
    torch.set_num_threads(1)
