"""Video decoding throughput: PyAV vs OpenCV, full sequential decode and 8/16/32 uniformly sampled frames.

Generates a 640×480, 30 fps, 10 s H.264 video (moving gradient + noise so the encoder does real work; GOP 30, i.e.
one keyframe per second as in typical web video), then times `affectclip.data.video.read_frames` per backend.
"Frames/s" counts returned frames, so sampled reads show how much seeking/skipping saves per delivered frame.
Runs in well under a minute on 2 CPU cores:

    python benchmarks/video_decode.py [--out benchmarks/RESULTS_video_decode.json] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from affectclip.data.video import UniformSampler, probe, read_frames


def make_video(path: Path, width: int = 640, height: int = 480, fps: int = 30, seconds: int = 10) -> Path:
    import av

    rng = np.random.default_rng(0)
    base = np.add.outer(np.arange(height), np.arange(width)).astype(np.float32)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.gop_size = fps
        for i in range(fps * seconds):
            grey = ((base + 4 * i) % 256).astype(np.uint8)
            img = np.stack([grey, np.roll(grey, i, 1), 255 - grey], -1)
            img[rng.integers(0, height, 500), rng.integers(0, width, 500)] = 255
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def time_read(path: Path, indices: list[int], backend: str, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        frames = read_frames(path, indices, backend=backend)
        times.append(time.perf_counter() - t0)
        assert len(frames) == len(indices)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).with_name("RESULTS_video_decode.json")))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = make_video(Path(tmp) / "bench.mp4")
        n = probe(path).n_frames
        cases = {"full": list(range(n))} | {f"{t} sampled": UniformSampler(t).indices(n) for t in (8, 16, 32)}
        rows = []
        for case, indices in cases.items():
            for backend in ("pyav", "opencv"):
                sec = time_read(path, indices, backend, args.repeats)
                rows.append({"case": case, "backend": backend, "frames": len(indices), "seconds": round(sec, 4),
                             "frames_per_s": round(len(indices) / sec, 1)})
    print(f"{'case':<12} {'backend':<8} {'frames':>6} {'seconds':>8} {'frames/s':>9}")
    for r in rows:
        print(f"{r['case']:<12} {r['backend']:<8} {r['frames']:>6} {r['seconds']:>8.3f} {r['frames_per_s']:>9.1f}")
    meta = {"video": "640x480 30fps 10s libx264 gop30", "machine": platform.processor() or platform.machine(),
            "repeats": args.repeats, "results": rows}
    Path(args.out).write_text(json.dumps(meta, indent=1))
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
