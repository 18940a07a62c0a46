"""Video decoding and frame samplers.

Decoding uses PyAV (bundles FFmpeg, pip-only) and falls back to OpenCV when PyAV is missing or cannot open a file
(ecosystem.md §5.4). A *frame folder* (sorted image files, e.g. the output of `extract_frames` or a dataset's
face release) is accepted wherever a video path is. Indices are 0-based decode order; requested indices are sorted
and de-duplicated before decoding so the decoder never seeks backwards, then returned in the requested order.

Samplers reproduce the published protocols (methods.md §2.3, §3.2; evaluation.md §3.3): `UniformSampler`
(Exp-CLIP segment midpoints), `WindowSampler` (EmoCLIP downsample + 32-frame window), `FpsSampler` (EmotionCLIP
8 fps) and `RandomSubsetSampler` (EmotionCLIP's 8 sorted random frames of a sentence).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from affectclip.core.images import ImageDecodeError, decode_rgb
from affectclip.data.manifest import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS  # noqa: F401 (one list, re-exported)

FRAMES_JSON = "frames.json"
# Seek instead of decoding through a gap when the next wanted frame is this many frames ahead: below it, sequential
# decoding is cheaper than a seek (which restarts at the previous keyframe).
SEEK_GAP_FRAMES = 96


class VideoError(ValueError):
    """A video (or frame folder) that cannot be read; the message names the file and what to do."""


@dataclass(frozen=True)
class VideoInfo:
    n_frames: int
    fps: float  # 0.0 when unknown (a frame folder without frames.json)
    duration: float  # seconds; 0.0 when unknown
    width: int
    height: int


def _natural_key(name: str) -> list:
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def list_frame_files(folder: str | Path) -> list[Path]:
    """Image files of a frame folder in natural order (so `frame_2.jpg` precedes `frame_10.jpg`)."""
    files = [p for p in Path(folder).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
    return sorted(files, key=lambda p: _natural_key(p.name))


def _check_exists(path: Path) -> None:
    if not path.exists():
        raise VideoError(f"{path}: no such video file or frame folder; check the path")
    if path.is_file() and path.stat().st_size == 0:
        raise VideoError(f"{path}: the file is empty (0 bytes); re-download or re-export it")


# A frame rate beyond this is not a video (high-speed cameras stop far below it); it also keeps fps-derived
# frame counts and indices finite.
MAX_FPS = 10_000.0


def _folder_fps(folder: Path) -> float:
    """The frame rate frames.json states (0.0 without one): a finite number in [0, MAX_FPS], or a VideoError."""
    meta = folder / FRAMES_JSON
    if not meta.exists():
        return 0.0
    hint = "delete it or re-run `affectclip data frames`"
    try:
        doc = json.loads(meta.read_text(encoding="utf-8"))
        fps = doc["fps"] if isinstance(doc, dict) else None
    except (OSError, ValueError, KeyError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise VideoError(f"{meta}: malformed frames.json ({type(exc).__name__}: {exc}); {hint}") from None
    if fps is None:
        return 0.0
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not 0 <= fps <= MAX_FPS:
        raise VideoError(f"{meta}: field 'fps' must be a number of frames per second in [0, {MAX_FPS:g}], "
                         f"got {fps!r}; {hint}")
    return float(fps)


def _sane_rate(fps: float) -> float:
    """A container's frame rate, or 0.0 (unknown) when a damaged or hostile header states a non-finite or absurd
    one: every index and duration computed from it must stay finite."""
    return fps if math.isfinite(fps) and 0 < fps <= MAX_FPS else 0.0


def _open_image(path: Path) -> np.ndarray:
    try:
        return decode_rgb(path)
    except ImageDecodeError as exc:
        raise VideoError(f"cannot read this frame image: {exc}") from None


# ----------------------------------------------------------------------------------------------------- probing


def probe(path: str | Path, backend: str = "auto") -> VideoInfo:
    """Frame count, frame rate, duration and size, from container metadata (no full decode).

    When the container does not store a frame count, packets are counted (demux only, still cheap). A video whose
    header declares frames larger than `core.images.MAX_PIXELS` is refused here, before any frame is decoded.
    """
    from affectclip.core import images

    path = Path(path)
    _check_exists(path)
    if path.is_dir():
        files = list_frame_files(path)
        if not files:
            raise VideoError(f"{path}: frame folder holds no images ({', '.join(IMAGE_EXTENSIONS)})")
        h, w = _open_image(files[0]).shape[:2]
        fps = _folder_fps(path)
        return VideoInfo(len(files), fps, len(files) / fps if fps else 0.0, w, h)
    info = _probe_pyav(path) if _use_pyav(path, backend) else _probe_opencv(path)
    if info.width * info.height > images.MAX_PIXELS:
        raise VideoError(f"{path}: refused, its frames declare {info.width}x{info.height} pixels (limit "
                         f"{images.MAX_PIXELS:,}); re-encode it smaller")
    return info


def _use_pyav(path: Path, backend: str) -> bool:
    """PyAV unless the caller asked for OpenCV, PyAV is not installed, or PyAV cannot open this file but OpenCV can."""
    if backend not in ("auto", "pyav", "opencv"):
        raise ValueError(f"unknown video backend {backend!r}; use auto, pyav or opencv")
    if backend == "opencv":
        return False
    try:
        import av
    except ImportError:
        if backend == "pyav":
            raise
        return False
    if backend == "pyav":
        return True
    try:
        with av.open(str(path)) as container:
            return bool(container.streams.video)
    except av.FFmpegError:
        import cv2

        cap = cv2.VideoCapture(str(path))
        ok = cap.isOpened() and cap.grab()
        cap.release()
        return not ok  # let PyAV produce the (better) error message when neither can read it


def _open_pyav(path: Path):
    import av

    try:
        container = av.open(str(path))
    except av.FFmpegError as exc:
        raise VideoError(f"{path}: not a readable video ({exc}); check the file is a complete video") from exc
    if not container.streams.video:
        container.close()
        raise VideoError(f"{path}: the file has no video stream (audio only?); pass a video file")
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    return container, stream


def _probe_pyav(path: Path) -> VideoInfo:
    import av

    container, stream = _open_pyav(path)
    with container:
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        fps = float(rate) if rate else 0.0
        n = stream.frames
        if not n:
            try:
                n = sum(1 for packet in container.demux(stream) if packet.size)
            except av.FFmpegError as exc:
                raise VideoError(f"{path}: corrupt video ({exc}); re-encode or re-download it") from exc
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / 1_000_000
        else:
            duration = n / fps if fps else 0.0
        width, height = stream.codec_context.width, stream.codec_context.height
    fps, duration = _sane_rate(fps), duration if math.isfinite(duration) and duration >= 0 else 0.0
    if n <= 0:
        raise VideoError(f"{path}: the video has no frames; re-export it")
    return VideoInfo(int(n), fps, duration, width, height)


def _probe_opencv(path: Path) -> VideoInfo:
    import cv2

    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise VideoError(f"{path}: not a readable video (OpenCV cannot open it); check the file is a complete video")
    n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    fps = _sane_rate(float(cap.get(cv2.CAP_PROP_FPS) or 0.0))
    w, h = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
    cap.release()
    if n <= 0:
        raise VideoError(f"{path}: the video has no frames; re-export it")
    return VideoInfo(n, fps, n / fps if fps else 0.0, w, h)


# ----------------------------------------------------------------------------------------------------- reading


def read_frames(
    path: str | Path,
    indices: Sequence[int],
    start: float | None = None,
    end: float | None = None,
    backend: str = "auto",
) -> np.ndarray:
    """Decode the frames at `indices` → uint8 [T, H, W, 3] RGB, in the requested order (repeats allowed).

    `start`/`end` (seconds) restrict reading to a segment: indices are then relative to the segment's first frame,
    ceil(start·fps), as EmotionCLIP's index does; an index past floor(end·fps) is an error. Fewer decodable frames
    than requested (a truncated file, or a frame count in the metadata that lies) raises `VideoError`.
    """
    path = Path(path)
    _check_exists(path)
    wanted = [int(i) for i in indices]
    if not wanted:
        raise ValueError(f"{path}: no frame indices requested")
    if min(wanted) < 0:
        raise ValueError(f"{path}: negative frame index {min(wanted)} requested")
    if start is not None or end is not None:
        fps = probe(path, backend).fps
        if fps <= 0:
            raise VideoError(f"{path}: frame rate unknown, cannot read a time segment; add fps to {FRAMES_JSON}")
        offset = math.ceil((start or 0.0) * fps)
        wanted = [i + offset for i in wanted]
        if end is not None and max(wanted) > math.floor(end * fps):
            raise ValueError(f"{path}: index {max(wanted) - offset} falls after the segment end {end:.3f} s")
    unique = sorted(set(wanted))
    if path.is_dir():
        decoded = _read_folder(path, unique)
    elif _use_pyav(path, backend):
        decoded = _read_pyav(path, unique)
    else:
        decoded = _read_opencv(path, unique)
    return np.stack([decoded[i] for i in wanted])


def _short_video(path: Path, got: int, need: int) -> VideoError:
    return VideoError(
        f"{path}: only {got} frame(s) could be decoded but frame {need} was requested "
        f"(truncated or corrupt file?); re-encode it or sample with the real frame count"
    )


def _read_folder(folder: Path, unique: list[int]) -> dict[int, np.ndarray]:
    files = list_frame_files(folder)
    if not files:
        raise VideoError(f"{folder}: frame folder holds no images")
    if unique[-1] >= len(files):
        raise _short_video(folder, len(files), unique[-1])
    return {i: _open_image(files[i]) for i in unique}


def _frame_index(frame, t0: float, fps: float) -> int:
    """Decode-order index of a frame reached after a seek, from its timestamp (assumes a constant frame rate)."""
    return round((float(frame.time) - t0) * fps)


def _read_pyav(path: Path, unique: list[int]) -> dict[int, np.ndarray]:
    import av

    container, stream = _open_pyav(path)
    out: dict[int, np.ndarray] = {}
    fps = float(stream.average_rate or stream.guessed_rate or 0)
    t0 = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
    can_seek = fps > 0 and stream.time_base is not None
    pos = 0  # index of the next frame the decoder will return
    todo = list(unique)
    with container:
        try:
            while todo:
                after_seek = can_seek and todo[0] - pos > SEEK_GAP_FRAMES
                if after_seek:
                    pts = int((t0 + todo[0] / fps) / stream.time_base)
                    container.seek(pts, stream=stream, backward=True, any_frame=False)
                for frame in container.decode(stream):
                    # counting is exact, except for the first frame after a seek: that one is placed by timestamp
                    idx = _frame_index(frame, t0, fps) if after_seek and frame.time is not None else pos
                    after_seek = False
                    pos = idx + 1
                    if idx == todo[0]:
                        out[idx] = frame.to_ndarray(format="rgb24")
                        todo.pop(0)
                    elif idx > todo[0]:
                        raise VideoError(
                            f"{path}: seeking to frame {todo[0]} landed on frame {idx}; the frame rate is not "
                            f"constant — re-encode with a constant frame rate or extract frames first"
                        )
                    if not todo or (can_seek and todo[0] - pos > SEEK_GAP_FRAMES):
                        break  # done, or the next wanted frame is far away: seek to it
                else:
                    if todo:
                        raise _short_video(path, pos, todo[0])
        except av.FFmpegError as exc:
            raise VideoError(f"{path}: decoding failed at frame {pos} ({exc}); the file is corrupt, re-encode it") from exc
    return out


def _read_opencv(path: Path, unique: list[int]) -> dict[int, np.ndarray]:
    import cv2

    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise VideoError(f"{path}: not a readable video; check the file is a complete video")
    out: dict[int, np.ndarray] = {}
    pos = 0
    try:
        for target in unique:
            if target - pos > SEEK_GAP_FRAMES:
                cap.set(cv2.CAP_PROP_POS_FRAMES, target)
                pos = target
            while pos < target:
                if not cap.grab():
                    raise _short_video(path, pos, target)
                pos += 1
            ok, bgr = cap.read()
            if not ok:
                raise _short_video(path, pos, target)
            pos += 1
            out[target] = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    finally:
        cap.release()
    return out


def _fps_pick(src_fps: float, fps: float | None, stride: int | None) -> Iterator[int]:
    """Infinite increasing source indices kept by a target rate (nearest frame, like ffmpeg's fps filter) or a stride."""
    if fps is not None and stride is not None:
        raise ValueError("give either fps or stride, not both")
    if stride is not None:
        if stride < 1:
            raise ValueError(f"stride must be >= 1, got {stride}")
        k = 0
        while True:
            yield k * stride
            k += 1
    if fps is None or src_fps <= 0 or fps >= src_fps:
        if fps is not None and fps <= 0:
            raise ValueError(f"fps must be > 0, got {fps}")
        k = 0
        while True:
            yield k
            k += 1
    if fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    k, last = 0, -1
    while True:
        idx = math.floor(k * src_fps / fps + 0.5)
        if idx != last:
            yield idx
            last = idx
        k += 1


def iter_frames(
    path: str | Path, fps: float | None = None, stride: int | None = None, backend: str = "auto"
) -> Iterator[tuple[int, float, np.ndarray]]:
    """Stream `(frame_index, timestamp_s, frame_rgb)`; memory stays at one decoded frame (for inference on long videos).

    `fps` keeps the frame nearest to each tick of the target rate; `stride` keeps every stride-th frame.
    """
    path = Path(path)
    info = probe(path, backend)
    picks = _fps_pick(info.fps, fps, stride)
    want = next(picks)
    src_fps = info.fps

    def stamp(i: int) -> float:
        return i / src_fps if src_fps else 0.0

    if path.is_dir():
        for i, file in enumerate(list_frame_files(path)):
            if i == want:
                yield i, stamp(i), _open_image(file)
                want = next(picks)
        return
    if _use_pyav(path, backend):
        import av

        container, stream = _open_pyav(path)
        with container:
            i = 0
            try:
                for frame in container.decode(stream):
                    if i == want:
                        yield i, stamp(i), frame.to_ndarray(format="rgb24")
                        want = next(picks)
                    i += 1
            except av.FFmpegError as exc:
                raise VideoError(f"{path}: decoding failed at frame {i} ({exc}); the file is corrupt") from exc
        if i == 0:
            raise VideoError(f"{path}: no frame could be decoded; the file is corrupt or empty")
        return
    import cv2

    cap = cv2.VideoCapture(str(path))
    try:
        i = 0
        while cap.grab():
            if i == want:
                ok, bgr = cap.retrieve()
                if not ok:
                    raise VideoError(f"{path}: decoding failed at frame {i}; the file is corrupt")
                yield i, stamp(i), cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
                want = next(picks)
            i += 1
    finally:
        cap.release()
    if i == 0:
        raise VideoError(f"{path}: no frame could be decoded; the file is corrupt or empty")


def extract_frames(path: str | Path, out_dir: str | Path, fps: float | None = None, quality: int = 90) -> int:
    """Write the (fps-resampled) frames as `out_dir/%06d.jpg` plus `frames.json`; returns the number of frames.

    Files are numbered from 0 in output order and frames.json maps each to its source index and timestamp, so the
    off-by-one of EmotionCLIP's `ffmpeg %08d` numbering (methods.md §2.9 item 11) cannot happen here.
    """
    from affectclip.core.io import atomic_path, atomic_write_json
    from affectclip.core.outputs import display_path

    path, out_dir = Path(path), Path(out_dir)
    info = probe(path)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for n, (idx, ts, frame) in enumerate(iter_frames(path, fps=fps)):
        name = f"{n:06d}.jpg"
        with atomic_path(out_dir / name) as tmp:  # a full disk never leaves a truncated frame
            Image.fromarray(frame).save(tmp, format="JPEG", quality=quality)
        rows.append({"file": name, "index": idx, "timestamp": round(ts, 6)})
    out_fps = min(fps, info.fps) if fps and info.fps else (fps or info.fps)
    meta = {"source": display_path(path), "source_fps": info.fps, "fps": out_fps, "frames": rows}
    atomic_write_json(out_dir / FRAMES_JSON, meta, indent=1)
    return len(rows)


# ----------------------------------------------------------------------------------------------------- samplers


def _rng(rng: np.random.Generator | None) -> np.random.Generator:
    return rng if rng is not None else np.random.default_rng()


def _check_n(n_frames: int) -> None:
    if n_frames <= 0:
        raise VideoError(f"cannot sample frames from a clip with {n_frames} frames")


@dataclass(frozen=True)
class UniformSampler:
    """Exp-CLIP dynamic-FER protocol: T segment midpoints, index = int(tick/2 + tick·k), tick = n/T (deterministic).

    For n ≤ T the formula repeats frames; `faithful_short_clip=True` instead returns all zeros, reproducing
    Exp-CLIP's code (the first frame T times) for comparison with its published numbers.
    """

    T: int = 16
    faithful_short_clip: bool = False

    def indices(self, n_frames: int, fps: float = 0.0, rng: np.random.Generator | None = None) -> list[int]:
        _check_n(n_frames)
        if self.faithful_short_clip and n_frames <= self.T:
            return [0] * self.T
        tick = n_frames / self.T
        return [min(int(tick / 2 + tick * k), n_frames - 1) for k in range(self.T)]


@dataclass(frozen=True)
class WindowSampler:
    """EmoCLIP: keep frames with index % stride == 0, then T consecutive kept frames.

    `random=True` (training, EmoCLIP's RandomSequence): random start with wrap-around. `random=False` (affectclip's
    evaluation default): the centred window, so test scores are reproducible. Clips with fewer than T kept frames
    are reflect-padded (`np.pad(..., "reflect")`), as EmoCLIP does.
    """

    T: int = 32
    stride: int = 4
    random: bool = True

    def indices(self, n_frames: int, fps: float = 0.0, rng: np.random.Generator | None = None) -> list[int]:
        _check_n(n_frames)
        kept = np.arange(0, n_frames, self.stride)
        L = len(kept)
        if L < self.T:
            return [int(i) for i in kept[np.pad(np.arange(L), (0, self.T - L), mode="reflect")]]
        start = int(_rng(rng).integers(L)) if self.random else (L - self.T) // 2
        return [int(kept[(start + i) % L]) for i in range(self.T)]


@dataclass(frozen=True)
class FpsSampler:
    """EmotionCLIP: resample to `fps` (8) by keeping the frame nearest to each tick; `max_frames` caps the count
    (the first ones are kept, as a streaming reader would)."""

    fps: float = 8.0
    max_frames: int | None = None

    def indices(self, n_frames: int, fps: float = 0.0, rng: np.random.Generator | None = None) -> list[int]:
        _check_n(n_frames)
        if fps <= 0:
            raise VideoError("FpsSampler needs the clip's frame rate; the video/frame folder does not state it")
        out = []
        for idx in _fps_pick(fps, self.fps, None):
            if idx >= n_frames or (self.max_frames is not None and len(out) >= self.max_frames):
                break
            out.append(idx)
        return out


@dataclass(frozen=True)
class RandomSubsetSampler:
    """EmotionCLIP training: T frames drawn at random without replacement from the span, then sorted.

    A span shorter than T is drawn with replacement (EmotionCLIP filters those clips out; we keep them usable).
    """

    T: int = 8

    def indices(self, n_frames: int, fps: float = 0.0, rng: np.random.Generator | None = None) -> list[int]:
        _check_n(n_frames)
        picks = _rng(rng).choice(n_frames, size=self.T, replace=n_frames < self.T)
        return sorted(int(i) for i in picks)


SAMPLERS = {"uniform": UniformSampler, "window": WindowSampler, "fps": FpsSampler, "random_subset": RandomSubsetSampler}


def make_sampler(name: str = "uniform", num_frames: int = 16, train: bool = False, **kwargs: Any):
    """A sampler from a config entry ({name, num_frames, ...}); the stochastic ones are random only at train time.

    Evaluation is deterministic: a window sampler takes the centred window and a random subset becomes uniform.
    """
    if name not in SAMPLERS:
        raise ValueError(f"unknown video sampler '{name}'; choose one of {', '.join(SAMPLERS)}")
    if name == "fps":
        return FpsSampler(max_frames=kwargs.pop("max_frames", num_frames), **kwargs)
    if name == "window":
        return WindowSampler(T=num_frames, random=kwargs.pop("random", train), **kwargs)
    if name == "random_subset" and not train:
        return UniformSampler(T=num_frames, **kwargs)
    return SAMPLERS[name](T=num_frames, **kwargs)
