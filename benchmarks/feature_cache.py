"""EmoCLIP head training: re-encoding frozen frames every epoch vs training from a feature cache.

    AFFECTCLIP_BPE_PATH=.../bpe_simple_vocab_16e6.txt.gz python benchmarks/feature_cache.py \
        [--clips 32] [--frames 8] [--batch 16] [--epochs 1] [--cached-epochs 5] [--threads 1] [--device cpu]

The EmoCLIP recipe with a randomly initialised (no download) frozen CLIP ViT-B/32 at 224 px and its frozen 12-layer
text tower, on synthetic onset clips rendered at 224 px, fp32, no augmentation, no validation. Both paths run the
real trainer (`affectclip.train.loop.train`, end to end: clip rendering, tokenisation, encoding, loss, SGD step):
* `re-encode`: data.train=synthetic — every epoch renders the clips and runs both frozen towers again;
* `cached`: data.train=features:DIR after `affectclip features` built DIR once (its cost is reported too).
Each is timed for two temporal heads: the recipe's released head (`faithful_quirk: true`, head size 2048,
~68.7 M parameters) and the intended one (`faithful_quirk: false`, ~6.8 M). Seconds per epoch = the trainer's own
wall time (after set-up) / epochs. Prints a table and writes benchmarks/results/feature_cache.json.

`FLOP bound`: the largest speed-up any cache can give, from the work each path must do per clip of T frames:
re-encode = T x (ViT forward per frame) + (text forward) + head training, cached = head training, with head training
~ 6 x (head parameters) x T FLOPs (forward 2, backward 4 per parameter per token; attention over T <= 32 tokens is
negligible). A head whose training costs a tenth of a frame forward cannot be cached 50x faster.

`--threads 1` (default) pins both paths to one intra-op thread: on a shared 2-core machine two threads stall on
every small op whenever the other core is busy, which inflates the head's many small ops far more than the frame
encoder's large GEMMs (measured 0.9 s vs 0.06 s per cached step), i.e. it would flatter neither path fairly.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from affectclip.train.config import load_config
from affectclip.train.features import build_feature_cache
from affectclip.train.loop import train

SHARED_BPE = Path(__file__).resolve().parents[2] / "shared/testvectors/open_clip/bpe_simple_vocab_16e6.txt.gz"
HEADS = {"released (quirk)": True, "intended": False}


def overrides(args: argparse.Namespace, quirk: bool) -> list[str]:
    return [
        "model.name=ViT-B-32-quickgelu", "model.pretrained=null",
        "model.overrides={temporal_cfg: {type: emoclip_transformer, layers: 2, heads: 8, ffn_dim: 2048, "
        f"faithful_quirk: {str(quirk).lower()}}}}}",
        "data.train=synthetic", "data.val=null", f"data.video_frames={args.frames}", "data.video_sampler={name: uniform}",
        f"data.synthetic={{n_train: {args.clips}, n_val: 0, image_size: 224, seed: 0}}",
        f"data.batch_size={args.batch}", "data.num_workers=0", "data.augment={scale: [1.0, 1.0], ratio: [1.0, 1.0]}",
        "run.precision=fp32", f"run.device={args.device}", "run.progress=false", "run.log_every=1000",
        "optim.milestones=[1000]",
    ]


def flop_bound(cfg_overrides: list[str], frames: int) -> dict:
    """(re-encode FLOPs per clip) / (cached FLOPs per clip) for this recipe's towers and temporal head."""
    from train_step import forward_flops

    from affectclip.models.factory import create_model

    cfg = load_config("emoclip", cfg_overrides)
    model = create_model(cfg.model.name, pretrained=None, **cfg.model.overrides)
    image, text = forward_flops(model.config)
    head = 6.0 * sum(p.numel() for p in model.temporal.parameters()) * frames
    return {"head_params": sum(p.numel() for p in model.temporal.parameters()), "image_gflop_per_frame": image / 1e9,
            "text_gflop_per_clip": text / 1e9, "head_train_gflop_per_clip": head / 1e9,
            "flop_bound": (frames * image + text + head) / head}


def seconds_per_epoch(cfg_overrides: list[str], epochs: int) -> float:
    summary = train(load_config("emoclip", [*cfg_overrides, f"run.epochs={epochs}"]), None)
    return summary["seconds"] / epochs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clips", type=int, default=32)
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--epochs", type=int, default=1, help="re-encoding epochs timed per head")
    p.add_argument("--cached-epochs", type=int, default=5, help="cached epochs timed per head")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0 = torch's default)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="benchmarks/results/feature_cache.json")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if "AFFECTCLIP_BPE_PATH" not in os.environ and SHARED_BPE.exists():
        os.environ["AFFECTCLIP_BPE_PATH"] = str(SHARED_BPE)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        build_feature_cache(load_config("emoclip", overrides(args, True)), tmp)  # towers only: one cache, both heads
        build_s = time.perf_counter() - t0
        for head, quirk in HEADS.items():
            base = overrides(args, quirk)
            reencode = seconds_per_epoch(base, args.epochs)
            cached = seconds_per_epoch([*base, f"data.train=features:{tmp}"], args.cached_epochs)
            rows.append({"head": head, "reencode_s_per_epoch": reencode, "cached_s_per_epoch": cached,
                         "speedup": reencode / cached, **flop_bound(base, args.frames)})
    result = {
        "command": "python benchmarks/feature_cache.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "out"),
        "setup": {"model": "ViT-B-32-quickgelu (random init, frozen towers)", "image_size": 224, "clips": args.clips,
                  "frames": args.frames, "batch": args.batch, "device": args.device, "precision": "fp32",
                  "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
                  "machine": platform.processor() or platform.machine()},
        "cache_build_s": build_s, "rows": rows, "target_speedup": 50.0,
    }
    print(f"{args.clips} clips x {args.frames} frames, ViT-B/32 @224 frozen, batch {args.batch}, {args.device}; "
          f"cache built once in {build_s:.1f} s")
    print(f"{'temporal head':18s} {'params':>7s} {'re-encode s/epoch':>18s} {'cached s/epoch':>15s} {'speed-up':>9s} "
          f"{'FLOP bound':>10s}")
    for r in rows:
        print(f"{r['head']:18s} {r['head_params'] / 1e6:6.1f}M {r['reencode_s_per_epoch']:18.2f} "
              f"{r['cached_s_per_epoch']:15.3f} {r['speedup']:8.1f}x {r['flop_bound']:9.1f}x")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
