"""Video decoding and samplers: decoded frames must be the requested ones, and bad files must fail clearly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from affectclip.data.video import (
    FpsSampler,
    RandomSubsetSampler,
    UniformSampler,
    VideoError,
    WindowSampler,
    extract_frames,
    iter_frames,
    probe,
    read_frames,
)

STEP = 5  # frame i is filled with grey level i*STEP, so the decoded index is recoverable despite compression


def write_video(
    path: Path, n: int, fps: int = 24, size=(64, 48), codec: str = "libx264", gop: int = 12
) -> Path:
    import av

    w, h = size
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.codec_context.gop_size = gop
        for i in range(n):
            img = np.full((h, w, 3), (i * STEP) % 250, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def decoded_ids(frames: np.ndarray) -> list[int]:
    return [int(round(f.mean() / STEP)) for f in frames]


@pytest.fixture(scope="module")
def video48(tmp_path_factory) -> Path:
    return write_video(tmp_path_factory.mktemp("v") / "clip.mp4", 48)


def test_probe_reports_metadata(video48):
    info = probe(video48)
    assert (info.n_frames, info.width, info.height) == (48, 64, 48)
    assert info.fps == pytest.approx(24)
    assert info.duration == pytest.approx(2.0, abs=0.05)


@pytest.mark.parametrize("backend", ["pyav", "opencv"])
def test_read_frames_returns_requested_frames_in_requested_order(video48, backend):
    idx = [40, 3, 3, 17, 0, 47]
    frames = read_frames(video48, idx, backend=backend)
    assert frames.shape == (6, 48, 64, 3) and frames.dtype == np.uint8
    assert decoded_ids(frames) == idx


def test_sparse_reads_with_seeking_are_frame_exact(tmp_path):
    path = write_video(
        tmp_path / "long.mp4", 50 * 8, size=(32, 32), gop=30
    )  # grey level wraps every 50 frames
    idx = [5, 130, 131, 260, 399]
    frames = read_frames(path, idx)
    assert [i % 50 for i in decoded_ids(frames)] == [i % 50 for i in idx]


def test_segment_indices_are_relative_to_segment_start(video48):
    frames = read_frames(video48, [0, 2], start=0.5, end=1.0)  # ceil(0.5*24) = 12
    assert decoded_ids(frames) == [12, 14]
    with pytest.raises(ValueError, match="segment end"):
        read_frames(video48, [20], start=0.5, end=1.0)


def test_frame_folder_and_extract_frames_roundtrip(video48, tmp_path):
    n = extract_frames(video48, tmp_path / "frames", fps=8)
    assert n == 16
    meta = json.loads((tmp_path / "frames" / "frames.json").read_text())
    assert meta["fps"] == 8 and [r["index"] for r in meta["frames"]][:3] == [0, 3, 6]
    info = probe(tmp_path / "frames")
    assert info.n_frames == 16 and info.fps == 8
    assert decoded_ids(read_frames(tmp_path / "frames", [1, 15])) == [3, 45]


def test_iter_frames_streams_at_target_rate(video48):
    got = [(i, round(t, 3)) for i, t, _ in iter_frames(video48, fps=8)]
    assert got[:3] == [(0, 0.0), (3, 0.125), (6, 0.25)] and len(got) == 16
    assert [i for i, _, _ in iter_frames(video48, stride=10)] == [0, 10, 20, 30, 40]


def test_missing_empty_truncated_and_non_video_files_raise(video48, tmp_path):
    with pytest.raises(VideoError, match="no such"):
        read_frames(tmp_path / "nope.mp4", [0])
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(VideoError, match="empty"):
        probe(tmp_path / "empty.mp4")
    (tmp_path / "text.mp4").write_text("not a video at all\n" * 50)
    with pytest.raises(VideoError, match="text.mp4"):
        read_frames(tmp_path / "text.mp4", [0])
    data = Path(video48).read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 2])
    with pytest.raises(VideoError, match="cut.mp4"):
        read_frames(tmp_path / "cut.mp4", [47])
    with pytest.raises(VideoError, match="only 48 frame"):
        read_frames(video48, [48])


def test_uniform_sampler_midpoints_and_faithful_short_clip():
    assert UniformSampler(16).indices(160) == [5 + 10 * k for k in range(16)]
    short = UniformSampler(16).indices(8)
    assert short == sorted(short) and set(short) == set(range(8))
    assert UniformSampler(16, faithful_short_clip=True).indices(16) == [0] * 16


def test_window_sampler_downsamples_centres_wraps_and_pads():
    centred = WindowSampler(T=4, stride=4, random=False).indices(40)  # kept 0,4,...,36 (10 frames)
    assert centred == [12, 16, 20, 24]
    rng = np.random.default_rng(0)
    for _ in range(20):
        win = WindowSampler(T=4, stride=4, random=True).indices(40, rng=rng)
        assert all(i % 4 == 0 for i in win)
        steps = {(b - a) % 40 for a, b in zip(win, win[1:], strict=False)}
        assert steps == {4}  # consecutive kept frames, wrapping from 36 back to 0
    assert WindowSampler(T=8, stride=2, random=False).indices(6) == [0, 2, 4, 2, 0, 2, 4, 2]


def test_fps_and_random_subset_samplers():
    assert FpsSampler(8).indices(48, fps=24) == list(range(0, 48, 3))
    assert FpsSampler(8, max_frames=4).indices(48, fps=24) == [0, 3, 6, 9]
    assert FpsSampler(8).indices(10, fps=5) == list(range(10))
    with pytest.raises(VideoError):
        FpsSampler(8).indices(10, fps=0)
    picks = RandomSubsetSampler(8).indices(20, rng=np.random.default_rng(1))
    assert picks == sorted(picks) and len(set(picks)) == 8 and max(picks) < 20


def test_manifest_rows_with_start_end_sample_only_their_segment(video48, tmp_path):
    """Two rows cut from the same file: each clip's frames come from its own span, spread over the whole span."""
    from affectclip.data.datasets import ManifestDataset
    from affectclip.data.manifest import write_manifest
    from affectclip.data.video import UniformSampler

    rows = [{"path": str(video48), "caption": "first half", "start": 0.0, "end": 0.95},
            {"path": str(video48), "caption": "second half", "start": 1.0, "end": 1.95}]
    ds = ManifestDataset(write_manifest(rows, tmp_path / "m.jsonl"), None, video_sampler=UniformSampler(4),
                         allow_outside=True)  # the video fixture lives in another folder
    for i, (lo, hi) in enumerate([(0, 22), (24, 46)]):  # ceil(start*24) .. floor(end*24)
        clip = ds[i]["video"]
        ids = decoded_ids((clip.permute(0, 2, 3, 1) * 255).round().byte().numpy())
        assert ids == sorted(ids) and lo <= ids[0] <= lo + 3 and hi - 3 <= ids[-1] <= hi, ids
