"""Each method recipe, as shipped, trains on synthetic faces: the loss falls and zero-shot beats chance clearly.

Only sizes change (tiny towers, few samples, fp32 on CPU); the method's own parts stay: EmotionCLIP's subject token,
temporal transformer and sentiment-guided loss; EmoCLIP's temporal CLS transformer (released quirk) and per-batch
InfoNCE; EmoCapCLIP's global-local loss with cross-modal positive mining. Random tiny towers are not the pretrained
CLIP the recipes expect, so the released learning rates (1e-8 on weights) and frozen towers are lifted where they
would keep a random network random; and a from-scratch tiny ViT learns too slowly for a unit test, so the learning
tests use a small CNN image tower while EmotionCLIP's ViT subject token is trained (mechanics) in its own test.
The three parametrised learning tests train on single images (video_frames=0). EmoCLIP also learns on the
synthetic onset clips (whose first frames are the same neutral face for every class) in its own test, with the
intended head size and a small CLS/position init (the released N(0,1) init stays at chance within a unit-test
budget). EmotionCLIP's temporal head, as released, learns on the same clips from a frame tower first trained on
single faces (its own test). The other video paths (clip sampling, padding, subject token) are tested for mechanics
in test_train_engine / test_models_temporal / the subject-token test below.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from affectclip.train.config import load_config
from affectclip.train.loop import train

CHANCE = 100.0 / 8

COMMON = [
    "model.pretrained=null", "data.train=synthetic", "data.val=synthetic", "data.num_workers=0",
    "data.batch_size=64", "data.caption_field=global", "run.progress=false", "run.log_every=1",
    "run.precision=fp32", "run.seed=0", "eval.prompts=expression", "optim.warmup_steps=5",
]

RECIPES = {
    "emotionclip": [  # image tower: small CNN (a from-scratch tiny ViT needs far more steps); subject token: below
        # 8 epochs: at 4, zero-shot UAR ended at 19.9 / 20.3 / 21.9 over seeds 0-2 on the stop-18 build machine,
        # against the 20.0 asserted (and 19.5 in one CI run); at 8, 23.8 / 25.0 / 26.6 (lr 0.01 instead stays at chance)
        "model.name=tiny-cnn-minilm", "model.overrides.vision_cfg={}", "data.video_frames=0", "run.epochs=8",
        "data.synthetic={n_train: 3072, n_val: 256, image_size: 64, seed: 0}",
        # VADER (the offline scorer) has 3 classes: the 5 negative emotions share nearly one distribution, and the
        # uncapped lambda/KL offsets (calibrated for a pretrained CLIP at scale 100; a random tower starts at 14 and
        # saturates at 100) would drop exactly the negatives that separate them; cap the offset (spec option).
        "loss.sentiment={lam: 10.0, eps: 1.0e-6, max_penalty: 5.0, faithful: false, scorer: vader}",
        "model.overrides.temporal_cfg.layers=1", "model.overrides.temporal_cfg.ffn_dim=128",
        "optim.lr_weights=0.003", "optim.lr_head=0.003", "optim.lr_gain_bias=0.003", "optim.lr_logit_scale=0.0",
    ],
    "emoclip": [
        "model.name=tiny-cnn-minilm", "model.freeze_image=false", "data.video_frames=0", "run.epochs=4",
        "data.video_sampler={name: window, stride: 1}", "data.synthetic={n_train: 3072, n_val: 256, image_size: 64, seed: 0}",
        "optim.lr=0.02", "optim.milestones=[100]", "eval.prompts=expression",
    ],
    "emocapclip": [
        "model.name=tiny-cnn-minilm", "run.epochs=3", "optim.lr=0.002", "optim.lr_head=0.002",
        "optim.lr_logit_scale=0.002", "data.synthetic={n_train: 3072, n_val: 256, image_size: 64, seed: 0}",
        "loss.mining={guide: cross, encoder: ema, ema_momentum: 0.9, threshold_text: 0.9, threshold_image: 0.9, "
        "top_k: 2, weight: 0.5, warmup_frac: 0.2}",
    ],
}


def _run(name: str, tmp_path):
    cfg = load_config(name, COMMON + RECIPES[name])
    summary = train(cfg, tmp_path / name)
    log = [json.loads(line) for line in (tmp_path / name / "log.jsonl").read_text().splitlines()]
    return summary, log


@pytest.mark.slow
@pytest.mark.parametrize("name", list(RECIPES))
def test_recipe_learns_on_synthetic_faces(name, tmp_path):
    summary, log = _run(name, tmp_path)
    losses = [r["loss"] for r in log if "loss" in r]
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.1, f"{name}: loss did not fall ({losses[:5]} -> {losses[-5:]})"
    val = summary["validation"][-1]
    assert val["n_samples"] == 256
    assert val["uar"] > 1.6 * CHANCE, f"{name}: zero-shot UAR {val['uar']:.1f} is not clearly above chance {CHANCE:.1f}"
    if name == "emocapclip":
        local = [r["loss_loc"] for r in log if "loss_loc" in r]
        assert np.mean(local[-5:]) < np.mean(local[:5]) - 0.3, f"local loss did not fall ({local[:5]} -> {local[-5:]})"
        auc = _local_branch_auc(summary["model"])
        assert auc > 0.75, f"the local branch ranks same-expression captions above others with AUC {auc:.2f} only"


def _local_branch_auc(model) -> float:
    """How well the local branch alone (sentence-conditioned patch pooling, `local_similarity`) tells a held-out
    face's own expression from others: the mean over faces of P(sim to a same-label face's local sentences > sim to
    a different-label face's).

    Measured over seeds 0-2 (stop 18): 0.84-0.87 with the recipe, against 0.50-0.65 with the local loss switched off
    (`loss.global_local.w_loc=0`, the global branch alone). Not asserted: *where* the attention falls. With this
    tiny CNN every one of its 4 x 4 cells sees the whole 64 px face, and no recipe variant we tried (more epochs, a
    larger local weight, 8 x 8 and 16 x 16 grids) made a mouth sentence's attention peak on the mouth reliably more
    often than chance (hit rates 0.05-0.38 against chance levels of 0.07-0.19)."""
    from affectclip.data.synthetic import SyntheticFaceDataset
    from affectclip.data.transforms import create_transforms
    from affectclip.losses.global_local import local_similarity
    from affectclip.models.factory import get_tokenizer

    ds = SyntheticFaceDataset(256, "test", seed=1, image_size=64, transform=create_transforms(model))
    samples = [ds[i] for i in range(len(ds))]
    k = max(len(s["caption"]["local"]) for s in samples)
    sentences = [(s["caption"]["local"] + [""] * k)[:k] for s in samples]
    model.eval()
    with torch.no_grad():
        patches = model.encode_dense(torch.stack([s["image"] for s in samples]))
        text = model.encode_text(get_tokenizer(model)([t for row in sentences for t in row])).reshape(len(ds), k, -1)
        real = torch.tensor([[j < len(s["caption"]["local"]) for j in range(k)] for s in samples])
        sim = local_similarity(patches, text, real).numpy()  # [faces, captions]
    labels = np.array([s["label"] for s in samples])
    aucs = []
    for i in range(len(ds)):
        same = labels == labels[i]
        same[i] = False
        pos, neg = sim[i, same], sim[i, labels != labels[i]]
        if len(pos) and len(neg):
            aucs.append((pos[:, None] > neg[None, :]).mean())
    return float(np.mean(aucs))


def test_emotionclip_recipe_trains_the_vit_subject_token_from_data_masks(tmp_path):
    """EmotionCLIP as composed (ViT + subject token + temporal transformer + sentiment loss) trains on masked clips."""
    cfg = load_config("emotionclip", COMMON + [
        "model.name=tiny-vit-minilm", "data.video_frames=2", "run.max_steps=3", "run.epochs=1", "data.val=null",
        "data.batch_size=32",
        "data.synthetic={n_train: 96, n_val: 0, image_size: 64, seed: 0}", "model.overrides.temporal_cfg.layers=1",
        "optim.lr_weights=0.002", "optim.lr_gain_bias=0.002"])
    summary = train(cfg, None)
    model = summary["model"].eval()
    assert summary["steps"] == 3 and np.isfinite(summary["final"]["loss"])
    assert model.visual.subject_token
    frames = torch.randn(1, 2, 3, 64, 64)
    mask = torch.zeros(1, 2, 64, 64)
    mask[..., 16:48, 16:48] = 1
    with torch.no_grad():
        with_subject = model.encode_video(frames, mask=mask)
        without = model.encode_video(frames, mask=torch.zeros_like(mask))
    assert not torch.allclose(with_subject, without), "the subject mask must change the clip embedding"


@pytest.mark.slow
def test_emoclip_temporal_head_learns_on_onset_clips(tmp_path):
    """EmoCLIP on video: 4-frame onset clips -> CNN frames -> EmoCLIP's CLS temporal transformer -> zero-shot.

    Two departures from the release, both config options: the intended head size (faithful_quirk=false) and a
    ViT-style 0.02 init of the CLS/position tables. With the released N(0,1) tables the clips start almost
    indistinguishable (test_models_temporal) and 192 steps stay at chance (measured UAR 10.9, loss ln 64); the
    quirk head with the small init reached only 18.4 by step 192. ~2-3 min on 2 CPU cores.
    """
    cfg = load_config("emoclip", COMMON + [
        o for o in RECIPES["emoclip"] if not o.startswith(("data.video_frames", "run.epochs", "data.synthetic"))
    ] + ["data.video_frames=4", "run.epochs=6", "data.synthetic={n_train: 3072, n_val: 256, image_size: 64, seed: 0}",
         "model.overrides.temporal_cfg.faithful_quirk=false", "model.overrides.temporal_cfg.embed_init_std=0.02"])
    summary = train(cfg, tmp_path / "run")
    losses = [json.loads(line)["loss"] for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()
              if "loss" in json.loads(line)]
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.3, f"loss did not fall ({losses[:5]} -> {losses[-5:]})"
    val = summary["validation"][-1]
    assert summary["model"].temporal is not None and val["n_samples"] == 256
    assert val["uar"] > 2 * CHANCE, f"zero-shot UAR on held-out clips {val['uar']:.1f} vs chance {CHANCE:.1f}"


@pytest.mark.slow
def test_emotionclip_temporal_transformer_learns_on_onset_clips(tmp_path):
    """EmotionCLIP on video, its head as released: 4-frame onset clips -> CNN frames -> temporal transformer (N(0,1)
    frame positions, post-LN, residual to the frames, temporal mean) -> sentiment-guided loss -> zero-shot on
    held-out clips.

    The release starts from a pretrained CLIP, and the head needs that: from a random CNN the post-LN output (norm
    ~11) swamps frame features of norm ~0.9 that are nearly identical across clips (cosine 0.96), and 288 steps
    predicted one class for every clip (UAR 12.5 at every epoch). So, as a user would, the frame tower is first
    trained on single faces (this file's learning-test recipe, ~75 s) and loaded with `model.pretrained`; the clip
    run (3 epochs, ~2 min) must then lift clip-level UAR well above chance and above its first epoch's (stop 18,
    seeds 0-2: epoch 1 -> 3 read 28.5 -> 43.8, 25.8 -> 42.2, 30.1 -> 39.8; with the earlier 4-epoch frame tower the
    last epoch fell to 27.0 after 31.6, failing the second condition).
    """
    train(load_config("emotionclip", COMMON + RECIPES["emotionclip"]), tmp_path / "faces")
    cfg = load_config("emotionclip", COMMON + [
        o for o in RECIPES["emotionclip"] if not o.startswith(("data.video_frames", "run.epochs"))
    ] + ["data.video_frames=4", "run.epochs=3", f"model.pretrained={tmp_path / 'faces' / 'model.safetensors'}"])
    summary = train(cfg, tmp_path / "clips")
    losses = [json.loads(line)["loss"] for line in (tmp_path / "clips" / "log.jsonl").read_text().splitlines()
              if "loss" in json.loads(line)]
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.1, f"loss did not fall ({losses[:5]} -> {losses[-5:]})"
    uar = [v["uar"] for v in summary["validation"]]
    assert summary["model"].temporal is not None and summary["validation"][-1]["n_samples"] == 256
    assert uar[-1] > 2 * CHANCE and uar[-1] > uar[0] + 5, f"clip-level zero-shot UAR per epoch {uar} (chance {CHANCE})"
