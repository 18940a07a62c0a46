"""End-to-end inference speed of `EmotionModel.predict`: photos (detection + crop + image tower + scoring) and a
long video (streaming decode at 5 fps sampling), each next to a detection-only baseline measured in the same run.

* photos: skimage's astronaut face placed on a 640×480 canvas (one face per photo), predicted in one call;
* video: 60 s, 640×480, 30 fps, H.264 written with PyAV — the same face moving over a textured background.

The ratio `predict / detection-only` shows what the model adds on top of the detector. The model is the installed
default when present, else a randomly initialised tiny-vit-wordpiece saved to a temp file (speed does not depend on
the weights; the tiny model under-states the cost of a ViT-B tower). Runs in < 3 minutes on 2 CPU cores:

    python benchmarks/inference.py [--detector default|haar|blazeface|mtcnn] [--photos 40] [--seconds 60] [--out benchmarks/results/inference.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from affectclip.data.sample_media import face_canvas, write_moving_face_video  # noqa: E402


def _model_path(tmp: Path) -> tuple[Path, str]:
    from affectclip.models.default import DEFAULT_MODEL_FILE

    if DEFAULT_MODEL_FILE.is_file():
        return DEFAULT_MODEL_FILE, "default"
    from affectclip.models.checkpoint import save_checkpoint
    from affectclip.models.factory import create_model

    return save_checkpoint(create_model("tiny-vit-wordpiece"), tmp / "tiny.safetensors"), "tiny-vit-wordpiece (random)"


def _timed(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--detector", default="default", choices=["default", "haar", "blazeface", "mtcnn"],
                        help="default = what `affectclip predict` uses")
    parser.add_argument("--photos", type=int, default=40)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--fps", type=float, default=5.0, help="video sampling rate")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "inference.json"))
    args = parser.parse_args()

    import torch

    import affectclip
    from affectclip.data.video import iter_frames

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        model_path, model_name = _model_path(tmp)
        model = affectclip.load(model_path, device=args.device, detector=args.detector)
        photos = [face_canvas(x=40 + (i * 37) % 360, seed=i) for i in range(args.photos)]
        model.predict(photos[:2])  # warm-up: detector construction, kernels, prompt embeddings
        t_video_write, video = _timed(lambda: write_moving_face_video(tmp / "face.mp4", args.seconds))

        t_det_photos, _ = _timed(lambda: [model.detector.detect(p) for p in photos])
        t_photos, df_photos = _timed(lambda: model.predict(photos))
        t_det_video, n_frames = _timed(
            lambda: sum(1 for _, _, f in iter_frames(video, fps=args.fps) if model.detector.detect(f) is not None)
        )
        t_video, df_video = _timed(lambda: model.predict(video, fps=args.fps))

    rows = [
        {"case": f"photos 640x480 x{args.photos}", "baseline": "detection only", "items": args.photos,
         "seconds": t_photos, "images_per_s": args.photos / t_photos, "baseline_seconds": t_det_photos,
         "ratio_to_baseline": t_photos / t_det_photos,
         "faces_found": int((df_photos["status"] == "ok").sum())},
        {"case": f"video {args.seconds:g}s 640x480 30fps @ {args.fps:g} fps", "baseline": "decode + detection only",
         "items": n_frames, "seconds": t_video, "x_real_time": args.seconds / t_video,
         "baseline_seconds": t_det_video, "ratio_to_baseline": t_video / t_det_video,
         "faces_found": int((df_video["status"] == "ok").sum()),
         "face_ids": int(df_video["face_id"].nunique())},
    ]
    detector = type(model.detector).__name__
    result = {"model": model_name, "detector": detector, "device": str(model.device),
              "torch_threads": torch.get_num_threads(), "platform": platform.platform(),
              "processor": platform.processor(), "video_write_seconds": t_video_write, "rows": rows}
    print(f"model: {model_name}; detector: {detector}; device: {model.device}")
    print(f"{'case':<42} {'s':>7} {'rate':>14} {'baseline s':>11} {'ratio':>6} {'faces':>6}")
    for r in rows:
        rate = f"{r['images_per_s']:.1f} img/s" if "images_per_s" in r else f"{r['x_real_time']:.1f}x real-time"
        print(f"{r['case']:<42} {r['seconds']:7.2f} {rate:>14} {r['baseline_seconds']:11.2f} "
              f"{r['ratio_to_baseline']:6.2f} {r['faces_found']:6d}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
