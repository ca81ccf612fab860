"""Testing on ImageNet VID val (spec 6): run a detector over every video, write the results file, evaluate.

Both models go through the same engine, :class:`dff.engine.video.VideoDetector`: DFF with key frames every
``TEST.KEY_FRAME_INTERVAL`` frames of each video (counted from the video's start), R-FCN on every frame.
Frames are read from the dataset's frame folders (``Data/VID/<video>/%06d.JPEG``), decoded and
preprocessed ahead in worker threads.

Test lists: a 4-column video list (``VID_val_videos``, DFF's) gives the videos directly; a 2-column frame
list (``VID_val_frames``, the baseline's) is grouped into videos by the frame's folder, consecutive lines
of one folder forming one video (the per-frame model does not care; the grouping only gives the
per-video cache and progress).

Output folder (``<output_path>/<cfg stem>/<test_image_set>/``):

* ``detections/<video>.npz``: per-video detections, written atomically when the video is done. A rerun
  reuses them (skips finished videos) if they were made with the same weights and test settings (a
  hash of the state_dict, the threshold, key interval, scales, NMS ...); otherwise, or with
  ``ignore_cache``, the video is run again. (The reference reused its pickles whatever the model: a
  silent stale-result trap, see spec 6.3.)
* ``<test_image_set>_eval.txt``: the evaluated frames ``<video>/<frame:06d> <frame_id>``;
* ``results/det_<test_image_set>_all.txt``: the reference's results file (spec 6.5);
* ``results/eval_<test_image_set>.json``: mAP, per-class APs, FGFA motion breakdown, timing.

Frames that cannot be read are reported (path), counted and get no detections; the test goes on.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import dataclasses
import hashlib
import json
import logging
import os
import sys
import zipfile
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from tqdm import tqdm

from dff.config import Config, ConfigError, config_stem, load_config
from dff.dataset.imagenet_vid import ImageNetVID, missing_dataset_message
from dff.engine.fastpath import FAST_NAMES, FastPath
from dff.engine.frames import Frame
from dff.engine.video import STAGES, VideoDetector
from dff.eval.vid_eval import format_table, load_vid_annotations, save_json, vid_eval, write_vid_results
from dff.models.builder import load_model
from dff.utils.checkpoint import CheckpointError
from dff.utils.image import ImageReadError, read_image
from dff.utils.io import atomic_open, atomic_write_text

__all__ = ["VideoFrames", "TesterError", "DEFAULT_THRESH", "list_videos", "eval_output_dir", "model_digest",
           "run_test_set", "build_test_parser", "run_test", "default_model_path"]

# the reference test scripts' default score thresholds (spec 6.2/6.3)
DEFAULT_THRESH = {"dff": 1e-4, "rfcn": 1e-3}
CACHE_VERSION = 1

log = logging.getLogger("dff.test")


class TesterError(RuntimeError):
    """A test cannot run (missing data/model); the message names the path and what to do."""
    __test__ = False  # not a pytest test class


@dataclasses.dataclass
class VideoFrames:
    """One video of the test list: its frames in order."""
    name: str               # "val/ILSVRC2015_val_00000000"
    paths: list[str]        # absolute JPEG paths
    frame_ids: list[int]    # global frame ids (results file, spec 6.1)
    indices: list[str]      # "<name>/<frame:06d>" (annotation / image-set index)


def list_videos(imdb: ImageNetVID) -> list[VideoFrames]:
    """The videos of ``imdb``'s test list(s), in file order (see the module docstring)."""
    kinds = {name: "pattern" in (imdb.set_roidb(name) or [{}])[0] for name in imdb.image_sets}
    if all(kinds.values()):
        return [VideoFrames(v.video, [v.frame_path(k) for k in range(v.n_frames)],
                          [v.first_frame_id + k for k in range(v.n_frames)],
                          [f"{v.video}/{k:06d}" for k in range(v.n_frames)]) for v in imdb.val_videos()]
    if any(kinds.values()):
        raise TesterError(f"{imdb.image_set}: mixes 4-column video lists and 2-column frame lists; test them separately")
    out: list[VideoFrames] = []
    for name in imdb.image_sets:
        cur: VideoFrames | None = None
        for rec in imdb.set_roidb(name):
            video = rec["index"].rsplit("/", 1)[0]
            if cur is None or cur.name != video:
                cur = VideoFrames(video, [], [], [])
                out.append(cur)
            cur.paths.append(rec["image"])
            cur.frame_ids.append(int(rec["frame_id"]))
            cur.indices.append(rec["index"])
    return out


def eval_output_dir(cfg: Config, cfg_path: str | None) -> str:
    """``<output_path>/<cfg stem>/<test image sets joined by _>`` (the reference's layout)."""
    return os.path.join(cfg.output_path or "./output", config_stem(cfg_path),
                        str(cfg.dataset.test_image_set).replace("+", "_"))


def model_digest(model: torch.nn.Module) -> str:
    """SHA-256 of the model's state_dict (names, shapes, dtypes, bytes): identifies the tested weights."""
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        t = v.detach().to("cpu")
        h.update(f"{k}:{tuple(t.shape)}:{t.dtype}\0".encode())
        # reshape(-1): NCHW byte order also for channels_last weights (the fast path converts them)
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _safe_name(video: str) -> str:
    return video.replace("/", "__").replace("\\", "__")


def _save_video(path: str, frame_ids: Sequence[int], dets: list[list[np.ndarray]], signature: str,
                bad: Sequence[str], times: np.ndarray) -> None:
    """Atomically write one video's detections: rows (M, 5) frame-major, class order, and counts (n, C)."""
    n = len(dets)
    num_classes = len(dets[0]) if n else 0
    counts = np.zeros((n, num_classes), dtype=np.int64)
    rows = []
    for i, per_class in enumerate(dets):
        for c in range(1, num_classes):
            a = np.asarray(per_class[c], dtype=np.float32).reshape(-1, 5)
            counts[i, c] = len(a)
            rows.append(a)
    with atomic_open(path, "wb") as f:
        np.savez(f, version=np.array(CACHE_VERSION), signature=np.array(signature),
                 frame_ids=np.asarray(frame_ids, dtype=np.int64), counts=counts,
                 rows=np.concatenate(rows) if rows else np.zeros((0, 5), np.float32),
                 bad=np.array(list(bad), dtype=str), times=np.asarray(times, dtype=np.float64))


def _load_video(path: str, signature: str, frame_ids: Sequence[int]) -> tuple[list[list[np.ndarray]], list[str], np.ndarray] | None:
    """A cached video's (detections, bad frames, times) or None when absent, stale or unreadable."""
    if not os.path.isfile(path):
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            if int(z["version"]) != CACHE_VERSION or str(z["signature"]) != signature:
                log.info("%s: made with other weights or settings; running the video again", path)
                return None
            if not np.array_equal(z["frame_ids"], np.asarray(frame_ids, dtype=np.int64)):
                log.info("%s: frame list changed; running the video again", path)
                return None
            counts, rows = z["counts"], z["rows"]
            bad, times = z["bad"].tolist(), z["times"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        log.warning("%s: unreadable cache (%s); running the video again", path, e)
        return None
    dets: list[list[np.ndarray]] = []
    pos = 0
    for i in range(counts.shape[0]):
        per_class: list[np.ndarray] = [np.zeros((0, 5), np.float32)]
        for c in range(1, counts.shape[1]):
            k = int(counts[i, c])
            per_class.append(rows[pos:pos + k])
            pos += k
        dets.append(per_class)
    return dets, bad, times


def _prefetch_frames(paths: Sequence[str], prepare: Callable[[np.ndarray], Any], workers: int, prefetch: int,
                     bad: list[str]) -> Iterator[Frame]:
    """Frames of ``paths`` in order, read and preprocessed ahead in threads; unreadable ones are reported
    in ``bad`` and skipped."""
    def load(i: int, p: str) -> Frame | None:
        try:
            im = read_image(p)
        except ImageReadError as e:
            bad.append(p)
            log.warning("warning: %s (frame skipped: no detections)", e)
            return None
        return Frame(i, os.path.basename(p), im, prepare(im))

    with cf.ThreadPoolExecutor(max(1, workers), thread_name_prefix="dff-test-decode") as pool:
        pending: list[cf.Future] = []
        it = iter(enumerate(paths))
        for _ in range(max(1, prefetch)):
            nxt = next(it, None)
            if nxt is None:
                break
            pending.append(pool.submit(load, *nxt))
        while pending:
            frame = pending.pop(0).result()
            nxt = next(it, None)
            if nxt is not None:
                pending.append(pool.submit(load, *nxt))
            if frame is not None:
                yield frame


def run_test_set(model: torch.nn.Module, cfg: Config, *, kind: str, output_dir: str, thresh: float | None = None,
                 key_interval: int | None = None, device: str | torch.device = "cpu", ignore_cache: bool = False,
                 num_workers: int = 2, progress: bool = True, max_videos: int | None = None,
                 fast: FastPath | None = None) -> dict[str, Any]:
    """Detect on every test video, write the results file, evaluate; returns the evaluation dict.

    Args:
        model: ``RFCN`` or ``DFF`` with *test* weights (bbox de-normalisation folded in), any device.
        cfg: the config (``dataset.*``, ``SCALES``, ``TEST.*``).
        kind: ``"dff"`` or ``"rfcn"`` (default threshold).
        output_dir: the test folder (see the module docstring).
        thresh: score threshold (default 1e-4 DFF / 1e-3 R-FCN).
        key_interval: DFF key-frame interval (default ``TEST.KEY_FRAME_INTERVAL``; R-FCN: always 1).
        ignore_cache: run every video again even when its cached detections match.
        max_videos: only the first N videos (smoke tests); the evaluation covers those.
        fast: the engine's GPU fast path (:class:`dff.engine.fastpath.FastPath`), None for plain float32.

    The returned dict is :func:`dff.eval.vid_eval.vid_eval`'s (with the motion breakdown) plus
    ``timing`` (mean seconds per frame and stage over the frames run now), ``videos``, ``frames``,
    ``videos_cached``, ``bad_frames`` and ``results_file``.
    """
    if kind not in DEFAULT_THRESH:
        raise ValueError(f"kind must be one of {sorted(DEFAULT_THRESH)}, got {kind!r}")
    thresh = DEFAULT_THRESH[kind] if thresh is None else float(thresh)
    dataset_path = str(cfg.dataset.dataset_path)
    if not os.path.isdir(dataset_path):
        raise TesterError(missing_dataset_message(dataset_path))
    imdb = ImageNetVID(str(cfg.dataset.test_image_set), dataset_path,
                       cache_dir=os.path.join(str(cfg.dataset.root_path), "cache"), verbose=progress)
    try:
        videos = list_videos(imdb)
    except FileNotFoundError as e:
        raise TesterError(str(e)) from None
    if max_videos is not None:
        videos = videos[:max_videos]
    if not videos:
        raise TesterError(f"{cfg.dataset.test_image_set}: the test list has no usable video")
    device = torch.device(device)
    model = model.to(device).eval()
    detector = VideoDetector(model, cfg, key_interval=key_interval, device=device, thresh=thresh, sync=False,
                             fast=fast)
    sig = json.dumps({"model": model_digest(model), "thresh": thresh, "key_interval": detector.key_interval,
                      "scales": [list(s) for s in cfg.SCALES], "means": list(cfg.network.PIXEL_MEANS),
                      "nms": float(cfg.TEST.NMS), "max_per_image": int(cfg.TEST.max_per_image),
                      "fast_path": detector.runner.fast.describe(),
                      "test": {k: cfg.TEST[k] for k in ("RPN_NMS_THRESH", "RPN_PRE_NMS_TOP_N",
                                                        "RPN_POST_NMS_TOP_N", "RPN_MIN_SIZE")}},
                     sort_keys=True)
    set_name = str(cfg.dataset.test_image_set).replace("+", "_")
    os.makedirs(output_dir, exist_ok=True)
    det_dir = os.path.join(output_dir, "detections")
    num_classes = int(cfg.dataset.NUM_CLASSES)
    total = sum(len(v.paths) for v in videos)
    bar = None
    if progress:
        bar = tqdm(total=total, desc=f"test {set_name}", unit="frame", file=sys.stderr, dynamic_ncols=True)
    all_dets: list[list[np.ndarray]] = []
    frame_ids: list[int] = []
    bad_all: list[str] = []
    stage_sum = dict.fromkeys((*STAGES, "total"), 0.0)
    frames_run = 0
    cached = 0
    keys = 0
    try:
        for v in videos:
            cache_path = os.path.join(det_dir, _safe_name(v.name) + ".npz")
            hit = None if ignore_cache else _load_video(cache_path, sig, v.frame_ids)
            if hit is not None:
                dets, bad, _ = hit
                cached += 1
                if bar is not None:
                    bar.update(len(v.paths))
            else:
                bad: list[str] = []  # type: ignore[no-redef]
                empty = [np.zeros((0, 5), np.float32) for _ in range(num_classes)]
                dets = [list(empty) for _ in v.paths]
                times = np.zeros((len(v.paths), len(STAGES) + 1))
                for r in detector.run(_prefetch_frames(v.paths, detector.prepare, num_workers, 2 * num_workers + 2, bad)):
                    dets[r.index] = [np.asarray(d, dtype=np.float32).reshape(-1, 5) for d in r.detections]
                    times[r.index] = [r.times[s] for s in (*STAGES, "total")]
                    keys += int(r.is_key)
                    frames_run += 1
                    for s in stage_sum:
                        stage_sum[s] += r.times[s]
                    if bar is not None:
                        bar.update(1)
                        if frames_run % 20 == 0:
                            bar.set_postfix(ms_per_frame=f"{1000 * stage_sum['total'] / frames_run:.0f}")
                if bad and bar is not None:
                    bar.update(len(bad))
                _save_video(cache_path, v.frame_ids, dets, sig, bad, times)
            bad_all.extend(bad)
            all_dets.extend(dets)
            frame_ids.extend(v.frame_ids)
    finally:
        if bar is not None:
            bar.close()

    # all_boxes[class][image], the reference's layout for the results file
    all_boxes = [[d[c] for d in all_dets] for c in range(num_classes)]
    results_file = os.path.join(output_dir, "results", f"det_{set_name}_all.txt")
    write_vid_results(results_file, all_boxes, frame_ids)
    eval_lines = [f"{ix} {fid}" for v in videos for ix, fid in zip(v.indices, v.frame_ids)]
    eval_set = os.path.join(output_dir, f"{set_name}_eval.txt")
    atomic_write_text(eval_set, "\n".join(eval_lines) + "\n")
    annotations = load_vid_annotations(os.path.join(dataset_path, "Annotations", "VID"),
                                       [ix for v in videos for ix in v.indices])
    result = vid_eval(results_file, eval_lines, annotations, motion=True)
    # the reference's mAP averages all 30 classes (NaN when a class without objects has detections);
    # on a subset such as the synthetic mini-VID the mean over the classes present is the useful number
    present = [a for n, a in zip(result["classes"], result["ap"]) if result["num_gt_per_class"][n] > 0]
    result["mAP_present_classes"] = float(np.mean(present)) if present else float("nan")
    result["timing"] = {s: (t / frames_run if frames_run else None) for s, t in stage_sum.items()}
    result["timing"]["frames_timed"] = frames_run
    result["timing"]["key_frames"] = keys
    result.update(videos=len(videos), frames=total, videos_cached=cached, bad_frames=bad_all,
                  results_file=results_file, thresh=thresh, key_interval=detector.key_interval)
    save_json(result, os.path.join(output_dir, "results", f"eval_{set_name}.json"))
    if bad_all:
        log.warning("%d unreadable frames had no detections (listed in the JSON under bad_frames)", len(bad_all))
    return result


# --------------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------------
def build_test_parser(kind: str, prog: str | None = None) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=prog, description=f"Test a trained {'DFF' if kind == 'dff' else 'R-FCN'} "
                                 "model on the test list of the config and evaluate (ImageNet VID mAP).")
    add_test_arguments(ap, kind)
    ap.add_argument("--model", default=None,
                    help="weights to test (native .pth or MXNet .params; default: "
                         "<output>/<cfg stem>/<train sets>/<prefix>-<TEST.test_epoch>.pth, else .params)")
    return ap


def add_test_arguments(ap: argparse.ArgumentParser, kind: str) -> None:
    if not any(a.dest == "cfg" for a in ap._actions):
        ap.add_argument("--cfg", required=True, help="experiment YAML")
    ap.add_argument("--thresh", type=float, default=None,
                    help=f"score threshold (default {DEFAULT_THRESH[kind]:g}, as the reference)")
    ap.add_argument("--ignore-cache", "--ignore_cache", dest="ignore_cache", action="store_true",
                    help="run every video again, even those with finished detections in the output folder")
    if kind == "dff":
        ap.add_argument("--key-interval", type=int, default=None,
                        help="key frame every N frames (default TEST.KEY_FRAME_INTERVAL)")
    if not any(a.dest == "num_workers" for a in ap._actions):
        ap.add_argument("--num-workers", type=int, default=2, help="frame decoding threads / loader workers")
    if not any(a.dest == "device" for a in ap._actions):
        ap.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    ap.add_argument("--max-videos", type=int, default=None, help="test only the first N videos (smoke tests)")
    ap.add_argument("--fast", default="none", choices=FAST_NAMES,
                    help="the engine's GPU fast path (default none: plain float32, as the reference); fp16 gave the "
                         "same synthetic mAP on an H200, see docs/benchmarks.md")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")


def default_model_path(cfg: Config, cfg_path: str | None) -> str:
    """The checkpoint the test script loads: ``<train dir>/<prefix>-<test_epoch>.pth`` (else ``.params``)."""
    train_dir = os.path.join(cfg.output_path or "./output", config_stem(cfg_path),
                             str(cfg.dataset.image_set).replace("+", "_"))
    base = os.path.join(train_dir, f"{cfg.TRAIN.model_prefix}-{int(cfg.TEST.test_epoch):04d}")
    for ext in (".pth", ".params"):
        if os.path.isfile(base + ext):
            return base + ext
    raise TesterError(f"{base}.pth (or .params): no model for TEST.test_epoch {cfg.TEST.test_epoch}; train first "
                    f"(the *_end2end_train_test.py script) or pass --model PATH")


def build_test_model(cfg: Config, model_path: str, kind: str) -> torch.nn.Module:
    """The model of ``kind`` with the test weights of ``model_path`` (:func:`dff.models.builder.load_model`)."""
    try:
        model, _ = load_model(model_path, cfg, kind=kind)
    except CheckpointError as e:
        raise TesterError(str(e)) from None
    return model


def setup_console_logging() -> None:
    for name in ("dff.test", "dff.train"):
        lg = logging.getLogger(name)
        lg.setLevel(logging.INFO)
        if not any(getattr(h, "_dff_console", False) for h in lg.handlers):
            h = logging.StreamHandler(sys.stderr)
            h.setFormatter(logging.Formatter("%(message)s"))
            h._dff_console = True  # type: ignore[attr-defined]
            lg.addHandler(h)
            lg.propagate = False


def resolve_device(device: str | None) -> torch.device:
    if device:
        d = torch.device(device)
        if d.type == "cuda" and not torch.cuda.is_available():
            raise TesterError(f"--device {device}: CUDA is not available on this machine")
        return d
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def run_test_from_args(args: argparse.Namespace, kind: str, cfg: Config, cfg_path: str,
                       model_path: str | None) -> dict[str, Any]:
    """Test the model at ``model_path`` (default :func:`default_model_path`) and print the table."""
    if not os.path.isdir(str(cfg.dataset.dataset_path)):  # before any folder is made
        raise TesterError(missing_dataset_message(str(cfg.dataset.dataset_path)))
    path = model_path or default_model_path(cfg, cfg_path)
    model = build_test_model(cfg, path, kind)
    out_dir = eval_output_dir(cfg, cfg_path)
    os.makedirs(out_dir, exist_ok=True)
    fh = logging.FileHandler(os.path.join(out_dir, "test.log"))
    fh.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    log.addHandler(fh)
    try:
        log.info("testing %s on %s (%s)", path, cfg.dataset.test_image_set, out_dir)
        device = resolve_device(args.device)
        result = run_test_set(model, cfg, kind=kind, output_dir=out_dir, thresh=args.thresh,
                            key_interval=getattr(args, "key_interval", None), device=device,
                            ignore_cache=args.ignore_cache, num_workers=args.num_workers,
                            progress=not args.no_progress, max_videos=args.max_videos,
                            fast=FastPath.from_name(getattr(args, "fast", "none"), device))
        log.info("%s", format_table(result))
        t = result["timing"]
        if t.get("total") is not None:
            log.info("mean time per frame: %.1f ms (%s); %d key frames of %d run",
                     1000 * t["total"], ", ".join(f"{s} {1000 * t[s]:.1f}" for s in STAGES),
                     t["key_frames"], t["frames_timed"])
        log.info("results: %s (mAP %.4f; over the %d classes with objects: %.4f)", result["results_file"],
                 result["mAP"], sum(1 for n in result["num_gt_per_class"].values() if n > 0),
                 result["mAP_present_classes"])
    finally:
        log.removeHandler(fh)
        fh.close()
    return result


def run_test(argv: Sequence[str] | None, kind: str, prog: str | None = None) -> int:
    """``*_test.py --cfg X.yaml``: test the ``TEST.test_epoch`` checkpoint and evaluate. Returns the exit code."""
    args = build_test_parser(kind, prog).parse_args(argv)
    setup_console_logging()
    try:
        cfg = load_config(args.cfg)
        run_test_from_args(args, kind, cfg, args.cfg, args.model)
    except (ConfigError, TesterError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
