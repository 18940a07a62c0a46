"""Seed-format checkpoints straight into the command line: `predict --model latest.pt` and `eval run --model
latest.pt` with no other step (a checkpoint in EmotionCLIP's exact layout and wrapper, 64-wide heads so every size
is inferable as in the release), and the tiny golden EmoCLIP file after `affectclip convert`."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import SHARED

import affectclip
from affectclip.cli import main
from affectclip.models.factory import build_model, create_model

EMOTIONCLIP_64 = {
    "embed_dim": 32,
    "vision_cfg": {"type": "vit", "image_size": 64, "patch_size": 16, "width": 64, "layers": 1, "head_width": 64,
                   "mlp_ratio": 4.0, "subject_token": True},
    "text_cfg": {"type": "clip", "context_length": 77, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 1,
                 "tokenizer": "clip_bpe"},
    "temporal_cfg": {"type": "emotionclip_transformer", "layers": 1, "heads": 8, "ffn_dim": 2048, "max_frames": 4},
    "quick_gelu": False,
    # what EmotionCLIP's file implies: ImageNet statistics in all its loaders, EOT dropped from long texts
    "preprocess": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "interpolation": "bicubic",
                   "resize_mode": "shortest"},
    "tokenizer_options": {"truncate_keep_eot": False},
}


def _emotionclip_latest_pt(model, path) -> None:
    """Our model's weights written the way EmotionCLIP's TrainerBase.save_checkpoint writes `latest.pt`."""
    sd = {}
    for key, value in model.state_dict().items():
        if key.startswith("temporal.encoder."):
            key = key.replace("temporal.encoder.", "visual_head.fusion_layer.")
        elif key.startswith("temporal.frame_position."):
            key = key.replace("temporal.frame_position.", "visual_head.frame_position_embedding.")
        elif key.startswith("text."):
            key = "backbone." + key.removeprefix("text.")
        elif key.startswith("visual."):
            key = "backbone." + key
        sd[key] = value.clone()
    sd["backbone.logit_scale"] = sd["logit_scale"]
    sd["visual_head.position_ids"] = torch.arange(4)
    torch.save({"args": {"video_len": 4}, "epoch": 3, "model": sd, "optimizer": {"state": {}, "param_groups": []},
                "grad_scaler": {}, "lr_scheduler": {}}, path)


def _video(path, frames: int = 6) -> None:
    import av

    rng = np.random.default_rng(0)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=5)
        stream.height, stream.width, stream.pix_fmt = 64, 64, "yuv420p"
        for _ in range(frames):
            image = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


@pytest.fixture
def bpe_env(bpe_path, monkeypatch):
    monkeypatch.setenv("AFFECTCLIP_BPE_PATH", str(bpe_path))


def test_predict_and_eval_take_an_emotionclip_latest_pt_as_it_is(tmp_path, bpe_env):
    torch.manual_seed(0)
    model = build_model(EMOTIONCLIP_64).eval()
    latest = tmp_path / "latest.pt"
    _emotionclip_latest_pt(model, latest)
    video = tmp_path / "clip.mp4"
    _video(video)
    out = tmp_path / "pred.csv"
    assert main(["predict", str(video), "--model", str(latest), "--labels", "happy,sad", "--no-detect",
                 "--out", str(out)]) == 0
    got = pd.read_csv(out)
    want = affectclip.load(model).predict(video, labels=["happy", "sad"], detect_faces=False)
    assert len(got) == len(want) > 0 and (got["status"] == "ok").all()
    np.testing.assert_allclose(got[["happy", "sad"]].to_numpy(), want[["happy", "sad"]].to_numpy(), atol=1e-6)
    assert create_model(latest).config["tokenizer_options"] == {"truncate_keep_eot": False}

    manifest = tmp_path / "eval.jsonl"
    manifest.write_text("".join(json.dumps({"path": str(video), "caption": c}) + "\n"
                                for c in ("a happy person", "a sad person")))
    assert main(["eval", "run", "--model", str(latest), "--manifest", str(manifest), "--task", "retrieval",
                 "--output", str(tmp_path / "results")]) == 0


def test_tiny_emoclip_file_converted_once_then_used_by_predict(tmp_path, bpe_env, capsys):
    ckpt = SHARED / "testvectors" / "emoclip" / "checkpoint.pt"
    if not ckpt.is_file():
        pytest.skip(f"EmoCLIP golden vectors not found at {ckpt}")
    video = tmp_path / "clip.mp4"
    _video(video)
    args = ["predict", str(video), "--labels", "happy,sad", "--no-detect", "--out", str(tmp_path / "p.csv")]
    assert main([*args, "--model", str(ckpt)]) == 2  # the tiny file's head counts are not width/64
    assert "text_cfg.heads" in capsys.readouterr().err
    converted = tmp_path / "emoclip.safetensors"
    assert main(["convert", str(ckpt), str(converted), "text_cfg.heads=2", "temporal_cfg.heads=2",
                 "temporal_cfg.dim_head=48"]) == 0
    assert main([*args, "--model", str(converted)]) == 0
    assert (pd.read_csv(tmp_path / "p.csv")["status"] == "ok").all()
