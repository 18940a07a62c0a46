"""The seed repositories' own checkpoint files (EmotionCLIP `latest.pt`, EmoCLIP DDP state dict) load as they are
and reproduce every output the original code saved (shared/testvectors/{emotionclip,emoclip}/, tiny random models)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import SHARED
from safetensors.torch import load_file

import affectclip
from affectclip.models.checkpoint import read_checkpoint_config
from affectclip.models.errors import CheckpointError, ShapeError
from affectclip.models.factory import create_model, get_model_config, get_tokenizer
from affectclip.models.tokenizer import EOT_ID, SOT_ID, CLIPTokenizer

ATOL = 1e-5  # the seeds' fused TransformerEncoder path differs from plain math by ~5e-7 (README §5)
# Head counts no weight records: the tiny models use 32-wide vision heads (EmotionCLIP) and 2 text/temporal heads.
EMOTIONCLIP_TINY = {"vision_cfg": {"head_width": 32}, "text_cfg": {"heads": 2}}
EMOCLIP_TINY = {"text_cfg": {"heads": 2}, "temporal_cfg": {"heads": 2, "dim_head": 48}}


def _folder(name: str):
    folder = SHARED / "testvectors" / name
    if not (folder / "checkpoint.pt").is_file():
        pytest.skip(f"{name} golden vectors not found at {folder} (set AFFECTCLIP_SHARED to the shared/ folder)")
    return folder


def _close(got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    err = (got.reshape(want.shape).float() - want).abs().max().item()
    assert err <= ATOL, f"{what}: max abs error {err:.2e}"


def _check_emotionclip(model, folder) -> None:
    inp, out = load_file(folder / "inputs.safetensors"), load_file(folder / "outputs.safetensors")
    video, mask, text = inp["video"], inp["video_mask"], inp["text"]
    model.eval()
    with torch.no_grad():
        _close(model.encode_frames(video, mask=mask), out["frame_features"], "frame_features")
        _close(model.encode_frames(video, mask=torch.zeros_like(mask)), out["frame_features_nomask"], "frames nomask")
        video_f = model.encode_video(video, mask=mask, normalize=False)
        _close(video_f, out["video_features"], "video_features")
        nomask = model.encode_video(video, mask=torch.zeros_like(mask), normalize=False)
        _close(nomask, out["video_features_nomask"], "video_features_nomask")
        _close(model.encode_video(video, normalize=False), out["video_features_nomask"], "no mask given = zero mask")
        _close(model.encode_video(video, mask=torch.ones_like(mask), normalize=False), out["video_features_fullmask"],
               "video_features_fullmask")
        text_f = model.encode_text(text, normalize=False)
        _close(text_f, out["text_features"], "text_features")
        _close(F.normalize(video_f, dim=-1), out["video_features_normalized"], "video normalized")
        _close(F.normalize(nomask, dim=-1), out["video_features_nomask_normalized"], "nomask normalized")
        _close(F.normalize(text_f, dim=-1), out["text_features_normalized"], "text normalized")
        _close(model.logit_scale, out["logit_scale"], "logit_scale")
        result = model(video, text, mask=mask)
        _close(result["logit_scale"], out["logit_scale_exp"], "logit_scale_exp")
        logits = result["logit_scale"] * result["image_features"] @ result["text_features"].T
        _close(logits, out["logits_per_video"], "logits_per_video")
        _close(logits.T, out["logits_per_text"], "logits_per_text")
        frames, masks = video.flatten(0, 1), mask.flatten(0, 1)
        _close(model.visual._subject_token(masks, frames), out["subject_token"], "subject_token")


def _check_emoclip(model, folder) -> None:
    inp, out = load_file(folder / "inputs.safetensors"), load_file(folder / "outputs.safetensors")
    video, text = inp["video"], inp["text"]
    model.eval()
    with torch.no_grad():
        frames = model.encode_frames(video)
        _close(frames, out["frame_features"], "frame_features")
        _close(model.temporal.forward_sequence(frames), out["temporal_output"], "temporal_output")
        video_f = model.encode_video(video, normalize=False)
        _close(video_f, out["video_features"], "video_features")
        text_f = model.encode_text(text, normalize=False)
        _close(text_f, out["text_features"], "text_features")
        _close(F.normalize(video_f, dim=-1), out["video_features_normalized"], "video normalized")
        _close(F.normalize(text_f, dim=-1), out["text_features_normalized"], "text normalized")
        _close(model.logit_scale, out["logit_scale"], "logit_scale (VClip's own, the one used)")
        result = model(video, text)
        _close(result["logit_scale"], out["logit_scale_exp"], "logit_scale_exp")
        logits = result["logit_scale"] * result["image_features"] @ result["text_features"].T
        _close(logits, out["logits_per_image"], "logits_per_image")
        _close(logits.T, out["logits_per_text"], "logits_per_text")


def test_emotionclip_training_checkpoint_reproduces_the_original_outputs():
    folder = _folder("emotionclip")
    model = create_model(folder / "checkpoint.pt", **EMOTIONCLIP_TINY)
    cfg = model.config
    assert cfg["vision_cfg"]["subject_token"] and cfg["quick_gelu"] is False
    assert cfg["preprocess"]["mean"] == [0.485, 0.456, 0.406]  # ImageNet stats in all of EmotionCLIP's loaders
    assert cfg["temporal_cfg"] == {"type": "emotionclip_transformer", "layers": 2, "heads": 8, "ffn_dim": 2048,
                                   "max_frames": 4}
    _check_emotionclip(model, folder)


def test_emoclip_ddp_checkpoint_reproduces_the_original_outputs():
    folder = _folder("emoclip")
    model = create_model(folder / "checkpoint.pt", **EMOCLIP_TINY)
    cfg = model.config
    assert cfg["quick_gelu"] is True and cfg["temporal_cfg"]["max_frames"] == 1023  # 1,024-row table incl. CLS
    assert (cfg["temporal_cfg"]["ffn_dim"], cfg["temporal_cfg"]["dim_head"]) == (32, 48)  # the head-size swap
    _check_emoclip(model, folder)


def test_named_config_with_pretrained_gives_the_same_model():
    folder = _folder("emoclip")
    config = create_model(folder / "checkpoint.pt", **EMOCLIP_TINY).config
    _check_emoclip(create_model(config, pretrained=folder / "checkpoint.pt"), folder)


@pytest.mark.parametrize("name", ["emotionclip", "emoclip"])
def test_a_head_count_no_weight_records_is_asked_for_by_name(name):
    folder = _folder(name)
    with pytest.raises(CheckpointError) as err:
        create_model(folder / "checkpoint.pt")  # tiny text tower: width 12, no 64-wide heads
    message = str(err.value)
    assert "\n" not in message and "checkpoint.pt" in message and "text_cfg.heads" in message


@pytest.mark.parametrize(("name", "overrides", "check"), [
    ("emotionclip", EMOTIONCLIP_TINY, _check_emotionclip), ("emoclip", EMOCLIP_TINY, _check_emoclip)])
def test_converted_safetensors_reproduces_the_vectors(tmp_path, name, overrides, check):
    from affectclip.cli import main

    folder = _folder(name)
    out = tmp_path / f"{name}.safetensors"
    args = ["convert", str(folder / "checkpoint.pt"), str(out)]
    args += [f"{section}.{key}={value}" for section, values in overrides.items() for key, value in values.items()]
    assert main(args) == 0
    assert read_checkpoint_config(out)["source_layout"] == name
    check(create_model(out), folder)


def test_released_configs_have_the_released_sizes():
    emotionclip, emoclip = get_model_config("emotionclip-vit-b-32"), get_model_config("emoclip-vit-b-32")
    assert emotionclip["temporal_cfg"]["max_frames"] == 8 and emotionclip["temporal_cfg"]["layers"] == 6
    assert emotionclip["vision_cfg"]["width"] == 768 and emotionclip["quick_gelu"] is False
    assert emotionclip["preprocess"]["std"] == [0.229, 0.224, 0.225] and emoclip["preprocess"]["std"][0] == 0.26862954
    assert emoclip["quick_gelu"] is True and emoclip["temporal_cfg"]["dim_head"] == 2048
    with torch.device("meta"):
        temporal = affectclip.create_model("emoclip-vit-b-32").temporal
    assert temporal.pos_embedding.shape == (1, 1024, 512)
    assert temporal.blocks[0][0].to_qkv.weight.shape == (49152, 512)  # README §1: inner 8 * 2048
    assert temporal.blocks[0][1].net[1].weight.shape == (512, 512)


def test_emotionclip_tokenizer_drops_eot_on_long_captions(bpe_path):
    folder = _folder("emotionclip")
    model = create_model(folder / "checkpoint.pt", **EMOTIONCLIP_TINY)
    caption = " ".join(["a person is smiling warmly at an old friend across a crowded birthday party"] * 6)
    ids = CLIPTokenizer(bpe_path=bpe_path).encode(caption)
    assert len(ids) + 2 > 77
    expected = ([SOT_ID] + ids + [EOT_ID])[:77]  # src/models/tokenizer.py: cut at 77, EOT not restored
    got = get_tokenizer(model, bpe_path=bpe_path)(caption)[0].tolist()
    assert got == expected and EOT_ID not in got
    assert get_tokenizer(model, bpe_path=bpe_path, truncate_keep_eot=True)(caption)[0, -1] == EOT_ID


def test_bad_masks_and_too_many_frames_are_one_line_errors():
    folder = _folder("emotionclip")
    model = create_model(folder / "checkpoint.pt", **EMOTIONCLIP_TINY).eval()
    video = torch.zeros(1, 5, 3, 64, 64)
    with pytest.raises(ShapeError, match="position table holds 4"):
        model.encode_video(video)
    with pytest.raises(ShapeError, match=r"subject mask must have shape .*\(4, 64, 64\).* got \(4, 32, 32\)"):
        model.encode_video(video[:, :4], mask=torch.ones(1, 4, 32, 32))


def test_open_clip_state_dict_converted_reproduces_its_vectors(tmp_path, testvectors_dir):
    """`affectclip convert` on an open_clip file (QuickGELU; head counts given, as the tiny model is not 64-wide)."""
    from affectclip.cli import main

    folder = testvectors_dir / "tiny-vit-quickgelu"
    out = tmp_path / "openclip.safetensors"
    assert main(["convert", str(folder / "open_clip_state_dict.safetensors"), str(out), "quick_gelu=true",
                 "vision_cfg.head_width=32", "text_cfg.heads=2"]) == 0
    model, inp, want = create_model(out).eval(), load_file(folder / "inputs.safetensors"), load_file(
        folder / "outputs.safetensors")
    with torch.no_grad():
        _close(model.encode_image(inp["images"], normalize=False), want["image_features"], "image_features")
        _close(model.encode_text(inp["text_tokens"], normalize=False), want["text_features"], "text_features")
    _close(model.logit_scale, want["logit_scale"], "logit_scale")


def test_convert_refuses_bad_arguments_with_exit_2(tmp_path, capsys):
    from affectclip.cli import main

    folder = _folder("emoclip")
    assert main(["convert", str(folder / "checkpoint.pt"), str(tmp_path / "x.pt")]) == 2
    assert main(["convert", str(tmp_path / "missing.pt"), str(tmp_path / "x.safetensors")]) == 2
    assert main(["convert", str(folder / "checkpoint.pt"), str(tmp_path / "x.safetensors"), "heads"]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line]
    assert len(lines) == 3 and ".safetensors" in lines[0] and "no such file" in lines[1] and "section.key" in lines[2]
    assert not (tmp_path / "x.safetensors").exists()


def test_released_emotionclip_layout_infers_the_named_config():
    """A file with the release's sizes (shapes only, built on the meta device) needs no override: the inferred
    architecture is `emotionclip-vit-b-32`."""
    from affectclip.models.seed_layouts import convert_seed_state_dict, detect_layout, infer_config

    named = get_model_config("emotionclip-vit-b-32")
    with torch.device("meta"):
        ours = create_model(named).state_dict()
    raw = {}
    for key, value in ours.items():  # our keys -> EmotionCLIP's (the inverse of seed_layouts' renames)
        key = key.replace("temporal.encoder.", "visual_head.fusion_layer.")
        key = key.replace("temporal.frame_position.", "visual_head.frame_position_embedding.")
        key = "backbone." + key.removeprefix("text.") if key.startswith(("text.", "visual.")) else key
        raw[key] = value
    raw["logit_scale"] = raw["backbone.logit_scale"] = torch.tensor(named["init_logit_scale"])
    raw["visual_head.position_ids"] = torch.arange(8)
    assert detect_layout(raw) == "emotionclip"
    inferred = infer_config(convert_seed_state_dict(raw, "emotionclip"), "emotionclip")
    for section in ("vision_cfg", "text_cfg", "temporal_cfg"):
        assert {k: v for k, v in inferred[section].items() if k in named[section]} == {
            k: v for k, v in named[section].items() if k in inferred[section] and k != "dropout"}, section
    assert (inferred["quick_gelu"], inferred["preprocess"], inferred["tokenizer_options"]) == (
        named["quick_gelu"], named["preprocess"], named["tokenizer_options"])


def test_damaged_seed_checkpoints_name_the_tensor(tmp_path):
    folder = _folder("emotionclip")
    ckpt = torch.load(folder / "checkpoint.pt", map_location="cpu", weights_only=True)
    sd = ckpt["model"]
    sd.pop("visual_head.fusion_layer.norm.bias")
    sd["visual_head.fusion_layer.extra.weight"] = torch.zeros(2)
    torch.save(ckpt, tmp_path / "latest.pt")
    with pytest.raises(CheckpointError) as err:
        create_model(tmp_path / "latest.pt", **EMOTIONCLIP_TINY)
    message = str(err.value)
    assert "\n" not in message and "latest.pt" in message
    assert "temporal.encoder.norm.bias" in message and "temporal.encoder.extra.weight" in message
    emoclip = create_model(_folder("emoclip") / "checkpoint.pt", **EMOCLIP_TINY).config
    with pytest.raises(CheckpointError, match="missing keys") as err:  # EmotionCLIP weights, EmoCLIP model
        create_model(emoclip, pretrained=folder / "checkpoint.pt")
    assert "\n" not in str(err.value)
