"""Video decoding throughput: PyAV vs OpenCV, full sequential decode and 8/16/32 uniformly sampled frames.

Generates a 640×480, 30 fps, 10 s H.264 video (moving gradient + noise so the encoder does real work; GOP 30, i.e.
one keyframe per second as in typical web video), then times `affectclip.data.video.read_frames` per backend.
"Frames/s" counts returned frames, so sampled reads show how much seeking/skipping saves per delivered frame.
Also "batches/s delivered": 16 short clips through ManifestDataset (8 uniform frames, 224 px transform) and a
DataLoader with 0 and 2 workers (batch 4). Runs in about a minute on 2 CPU cores:

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


def time_loader(folder: Path, workers: int, clips: int = 16, batch: int = 4, frames: int = 8) -> dict:
    """Batches/s that a DataLoader delivers from a video manifest (decode + sample + transform + collate)."""
    import torch

    from affectclip.data.datasets import ManifestDataset, collate
    from affectclip.data.transforms import CLIP_MEAN, CLIP_STD, ImageTransform

    manifest = folder / "clips.jsonl"
    if not manifest.exists():
        src = make_video(folder / "clip.mp4", width=320, height=240, seconds=2)
        rows = [{"path": src.name, "caption": f"clip {i}", "label": "neutral", "id": f"c{i}"} for i in range(clips)]
        manifest.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    ds = ManifestDataset(manifest, ImageTransform(224, CLIP_MEAN, CLIP_STD), video_sampler=UniformSampler(frames))
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, num_workers=workers, collate_fn=collate)
    t0 = time.perf_counter()
    n = sum(1 for b in loader if "video" in b)
    sec = time.perf_counter() - t0
    return {"case": f"loader {workers} workers", "backend": "pyav", "frames": clips * frames, "seconds": round(sec, 4),
            "frames_per_s": round(clips * frames / sec, 1), "batches_per_s": round(n / sec, 2)}


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
        rows += [time_loader(Path(tmp), workers) for workers in (0, 2)]
    print(f"{'case':<18} {'backend':<8} {'frames':>6} {'seconds':>8} {'frames/s':>9} {'batches/s':>9}")
    for r in rows:
        print(f"{r['case']:<18} {r['backend']:<8} {r['frames']:>6} {r['seconds']:>8.3f} {r['frames_per_s']:>9.1f} "
              f"{r.get('batches_per_s', ''):>9}")
    meta = {"video": "640x480 30fps 10s libx264 gop30", "machine": platform.processor() or platform.machine(),
            "repeats": args.repeats, "results": rows}
    Path(args.out).write_text(json.dumps(meta, indent=1))
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
