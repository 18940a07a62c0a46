"""Training-step speed: model-only step vs the full loop (data included), eager fp32 vs the fast path.

    python benchmarks/train_step.py [--configs tiny-vit-wordpiece ViT-B-32] [--batch 32] [--steps 20] [--workers 1]
                                    [--repeats 3] [--device cpu]

(ViT-B-32's CLIP tokenizer needs the BPE merges file: set AFFECTCLIP_BPE_PATH, see models/tokenizer.py.)

For each config, in a fresh subprocess (so peak memory is per configuration):
* `model fp32`: forward + CLIP loss + backward + AdamW on a fixed batch (no data loading), eager fp32, with the
  trainer's default optimizer (fused AdamW, on CPU as on CUDA) — the baseline of every ratio;
* `model fp32-unfused`: the same with torch's default AdamW (per-tensor on CPU, foreach on CUDA), the trainer's
  optimizer until fused became its CPU default (`optim.fused=false` still selects it);
* `model fast`: fp32's step with the fast path — bf16 autocast (and TF32 on CUDA); `--compile` adds
  torch.compile;
* `full loop`: `affectclip.train.loop.train` on synthetic faces written once as PNG files + a manifest (not timed),
  so decoding, augmentation, tokenisation and per-step JSONL logging are included; the model's own input size,
  fp32, one distinct caption per sample (as in the model-only batch), the FER+ recipe's augmentation (crop scale
  0.7-1, flip, brightness and contrast 0.3); two epochs, the steady-state rate is the second epoch's after 2
  warm-up steps (the first epoch also tokenises every caption once and, cached, decodes every file once; its rate
  is recorded as `first_epoch_samples_per_s`); reported as a ratio of the model-only fp32 rate (target >= 0.95).
  `--set KEY=VALUE` adds config overrides to every loop. Three variants:
  - `loop`: per-sample augmentation in `--workers` DataLoader processes (`data.batch_augment=false`, the default);
  - `loop-batch`: `data.batch_augment=true`, the DataLoader only decodes, the batch is augmented in the loop;
  - `loop-cached`: plus `data.cache_images=true` (every file is decoded once, in the first epoch).
With `--threads 1 --workers 1` on a 2-core machine the model step and the data work each get a core, as on a
machine with spare cores for DataLoader workers.
Every mode runs `--repeats` times, interleaved with the others; the table shows the median run (this 2-core machine
drifts by ~10 % between runs). Prints a table and writes JSON (default benchmarks/results/train_step.json).

MFU (GPU runs): achieved FLOP/s / peak. Training FLOPs per sample = 3 x forward FLOPs (backward ~ 2 x forward), with
forward FLOPs of a ViT/text transformer = sum over layers of 2 x tokens x (12 x width^2) + 2 x 2 x tokens^2 x width
(QKV/out/MLP matmuls + attention scores and mixing), plus patch embedding 2 x tokens x (3 x patch^2) x width and the
projections; `flops_per_sample` below implements it for CLIP ViT configs.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

WARMUP_STEPS = 2


def forward_flops(cfg: dict) -> tuple[float, float]:
    """Forward FLOPs of one image and of one text for a CLIP ViT + text transformer config (formula in the
    docstring); a tower of another type counts 0."""
    v, t = cfg["vision_cfg"], cfg["text_cfg"]
    image = text = 0.0
    if v["type"] == "vit":
        tokens = (v["image_size"] // v["patch_size"]) ** 2 + 1
        w = v["width"]
        image = 2 * (tokens - 1) * 3 * v["patch_size"] ** 2 * w
        image += v["layers"] * (2 * tokens * 12 * w * w + 4 * tokens * tokens * w) + 2 * w * cfg["embed_dim"]
    if t["type"] == "clip":
        n, w = t["context_length"], t["width"]
        text = t["layers"] * (2 * n * 12 * w * w + 4 * n * n * w) + 2 * w * cfg["embed_dim"]
    return image, text


def flops_per_sample(cfg: dict) -> float:
    """Training FLOPs of one (image, text) pair: 3 x forward (backward ~ 2 x forward)."""
    return 3.0 * sum(forward_flops(cfg))


def _model_step_rate(config: str, batch: int, steps: int, fast: bool, device: str, compile_: bool,
                     fused: bool = True) -> dict:
    import torch

    from affectclip.losses.contrastive import ClipLoss
    from affectclip.models.factory import create_model, get_tokenizer

    torch.manual_seed(0)
    model = create_model(config).to(device).train()
    tok = get_tokenizer(model)
    size = model.config["vision_cfg"]["image_size"]
    images = torch.randn(batch, 3, size, size, device=device)
    tokens = tok([f"an expression of emotion number {i}" for i in range(batch)]).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=fused or None)
    loss_fn = ClipLoss()
    if device.startswith("cuda") and fast:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    fwd = torch.compile(model) if compile_ else model
    autocast = torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=fast)

    def step():
        opt.zero_grad(set_to_none=True)
        with autocast:
            out = fwd(images, tokens)
        loss = loss_fn(out["image_features"], out["text_features"], out["logit_scale"])
        loss.backward()
        opt.step()

    for _ in range(WARMUP_STEPS):  # warm-up (and compilation)
        step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / steps
    res = {"samples_per_s": batch / dt, "step_s": dt}
    if device.startswith("cuda"):
        res["peak_gpu_mem_gb"] = torch.cuda.max_memory_allocated() / 2**30
        res["tflops"] = flops_per_sample(model.config) * batch / dt / 1e12
    return res


LOOP_VARIANTS = {
    "loop": [],
    "loop-batch": ["data.batch_augment=true"],
    "loop-cached": ["data.batch_augment=true", "data.cache_images=true"],
}


def _full_loop_rate(config: str, batch: int, steps: int, device: str, workers: int, variant: str,
                    extra: list[str]) -> dict:
    """The user's path: PNG files + manifest on disk, decoded (and augmented) by `workers` DataLoader processes,
    tokenised, stepped and logged by `affectclip.train.loop.train`, for two epochs. The rate is the steady state of
    the last epoch (its first `WARMUP_STEPS` are dropped, as the model-only measurement drops its warm-up), from
    every step's JSONL record."""
    import tempfile

    from affectclip.data.synthetic import write_synthetic_dataset
    from affectclip.models.factory import get_model_config
    from affectclip.train.config import load_config
    from affectclip.train.loop import train

    size = get_model_config(config)["vision_cfg"]["image_size"]
    with tempfile.TemporaryDirectory() as tmp:
        manifest = write_synthetic_dataset(Path(tmp) / "data", batch * (steps + WARMUP_STEPS), 0, seed=0,
                                           image_size=size)
        # one distinct caption per sample, as in the model-only batch: the loop encodes each distinct caption of a
        # batch once, so repeated synthetic captions would give it less text work than the baseline
        rows = [json.loads(line) for line in manifest.read_text().splitlines()]
        manifest.write_text("".join(json.dumps({**r, "caption": f"{r['caption']['global']}, sample {i}"}) + "\n"
                                    for i, r in enumerate(rows)))
        cfg = load_config("demo", [f"model.name={config}", f"data.train={manifest}:train", "data.val=null",
                                   f"data.batch_size={batch}", f"data.num_workers={workers}", "run.epochs=1",
                                   "data.augment={scale: [0.7, 1.0], hflip: 0.5, brightness: 0.3, contrast: 0.3}",
                                   "run.progress=false", f"run.device={device}", "run.log_every=1", "run.epochs=2",
                                   *LOOP_VARIANTS[variant], *extra])
        summary = train(cfg, Path(tmp) / "run")
        records = [json.loads(line) for line in (Path(tmp) / "run" / "log.jsonl").read_text().splitlines()]
    timed = [r for r in records if "batch_time" in r]
    first, last = ([r for r in timed if r["epoch"] == epoch][WARMUP_STEPS:] for epoch in (0, 1))

    def rate(steps: list[dict]) -> float:
        return batch * len(steps) / sum(r["batch_time"] for r in steps)

    return {"samples_per_s": rate(last), "first_epoch_samples_per_s": rate(first),
            "data_s_per_step": sum(r["data_time"] for r in last) / len(last), "steps": summary["steps"],
            "workers": workers, "overrides": extra, "bad_samples": summary["bad_samples"]}


def run_one(args: argparse.Namespace) -> None:
    """Child process: one (config, mode) measurement -> JSON on stdout."""
    import torch

    torch.set_num_threads(args.threads)
    if args.mode in LOOP_VARIANTS:
        res = _full_loop_rate(args.one, args.batch, args.steps, args.device, args.workers, args.mode, args.set)
    else:
        res = _model_step_rate(args.one, args.batch, args.steps, args.mode == "fast", args.device, args.compile,
                               fused=args.mode != "fp32-unfused")
    res["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print("RESULT " + json.dumps(res))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", nargs="+", default=["tiny-vit-wordpiece", "ViT-B-32"])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workers", type=int, default=1, help="DataLoader worker processes of the full loop")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="config override for every full-loop run (repeatable), e.g. data.shared_batches=false")
    ap.add_argument("--repeats", type=int, default=3, help="runs per mode (interleaved); the median is reported")
    modes = ["fp32", "fp32-unfused", "fast", *LOOP_VARIANTS]
    ap.add_argument("--modes", nargs="+", default=modes, choices=modes,
                    help="which measurements to run (fp32 is the baseline of the ratios and always runs)")
    ap.add_argument("--out", default="benchmarks/results/train_step.json")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--mode", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        run_one(args)
        return
    rows = []
    for config in args.configs:
        steps = args.steps if config.startswith("tiny") else max(2, args.steps // 8)
        row = {"config": config, "batch": args.batch, "device": args.device, "repeats": args.repeats}
        runs: dict[str, list[dict]] = {}
        for _ in range(args.repeats):  # interleaved, so a slow spell of the machine hits every mode alike
            for mode in dict.fromkeys(["fp32", *args.modes]):
                cmd = [sys.executable, __file__, "--one", config, "--mode", mode, "--batch", str(args.batch),
                       "--steps", str(steps), "--device", args.device, "--threads", str(args.threads),
                       "--workers", str(args.workers)]
                if args.compile:
                    cmd.append("--compile")
                cmd += [f"--set={kv}" for kv in args.set]
                out = subprocess.run(cmd, capture_output=True, text=True)
                line = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
                if not line:
                    raise SystemExit(f"{config} {mode} failed:\n{out.stderr[-2000:]}")
                runs.setdefault(mode, []).append(json.loads(line[0][7:]))
        for mode, results in runs.items():  # the median run by rate, with every repeat's rate beside it
            results.sort(key=lambda r: r["samples_per_s"])
            row[mode] = {**results[len(results) // 2], "all_samples_per_s": [r["samples_per_s"] for r in results]}
        for mode in ("fp32-unfused", "fast", *LOOP_VARIANTS):
            if mode in row:
                row[f"{mode}_vs_fp32"] = row[mode]["samples_per_s"] / row["fp32"]["samples_per_s"]
        rows.append(row)
        print(f"{config}: done", flush=True)
    columns = ["fp32", "fp32-unfused", "fast", *LOOP_VARIANTS]
    header = ("| config | batch | " + " | ".join(f"{m} samples/s" for m in columns) + " | "
              + " | ".join(f"{m}/fp32" for m in columns[1:]) + " | peak RSS GB (fp32) |")
    lines = [header, "|" + "---|" * (2 * len(columns) + 2)]

    def cell(r: dict, key: str, fmt: str) -> str:
        value = r[key]["samples_per_s"] if isinstance(r.get(key), dict) else r.get(key)
        return "not run" if value is None else format(value, fmt)

    for r in rows:
        lines.append(f"| {r['config']} | {r['batch']} | " + " | ".join(cell(r, m, ".1f") for m in columns) + " | "
                     + " | ".join(cell(r, f"{m}_vs_fp32", ".2f") for m in columns[1:])
                     + f" | {r['fp32']['peak_rss_gb']:.2f} |")
    print(f"{args.threads} torch thread(s), {args.workers} DataLoader worker(s)"
          + (f", loop overrides {' '.join(args.set)}" if args.set else ""))
    print("\n".join(lines))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"rows": rows, "threads": args.threads, "workers": args.workers,
                                          "loop_overrides": args.set}, indent=2))


if __name__ == "__main__":
    main()
