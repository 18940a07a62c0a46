"""Model factory and checkpoint I/O: configs, foreign/own checkpoints, round trips and error messages."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from affectclip.models.checkpoint import (
    convert_open_clip_state_dict,
    infer_clip_config,
    is_torchscript,
    load_state_dict,
    save_checkpoint,
)
from affectclip.models.factory import build_model, create_model, get_model_config, get_tokenizer, list_models
from affectclip.models.tokenizer import CLIPTokenizer

SHIPPED = [
    "ViT-B-32",
    "ViT-B-32-quickgelu",
    "ViT-B-16",
    "ViT-B-16-quickgelu",
    "ViT-L-14",
    "ViT-L-14-quickgelu",
    "tiny-vit",
    "tiny-vit-wordpiece",
]


def _inputs(context_length=77):
    torch.manual_seed(1)
    tokens = torch.randint(1, 1000, (2, context_length))
    tokens[:, 5] = 49407
    tokens[:, 6:] = 0
    return torch.randn(2, 3, 64, 64), tokens


def test_shipped_configs_match_released_parameter_counts():
    assert set(SHIPPED) <= set(list_models())
    expected_millions = {
        "ViT-B-32": 151.28,
        "ViT-B-16": 149.62,
        "ViT-L-14": 427.62,
    }  # open_clip, pretrained=None
    with torch.device("meta"):  # shapes only: no memory, no init cost
        for name, millions in expected_millions.items():
            for variant in (name, f"{name}-quickgelu"):
                model = build_model(get_model_config(variant))
                assert sum(p.numel() for p in model.parameters()) / 1e6 == pytest.approx(millions, abs=0.01)
                assert model.config["quick_gelu"] is variant.endswith("quickgelu")


def test_unknown_name_and_missing_file():
    with pytest.raises(ValueError, match="available: .*ViT-B-32"):
        create_model("ViT-X-99")
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        create_model("/tmp/affectclip-missing/nope.safetensors")
    with pytest.raises(FileNotFoundError, match="not found"):
        create_model("tiny-vit", pretrained="/tmp/affectclip-missing/w.pt")


def test_garbage_file_gives_clear_error(tmp_path):
    for name in ("junk.pt", "junk.safetensors"):
        path = tmp_path / name
        path.write_bytes(b"definitely not a checkpoint")
        with pytest.raises(ValueError, match=f"cannot read checkpoint .*{name}"):
            load_state_dict(path)


def test_nested_overrides_patch_one_key():
    model = create_model("tiny-vit", vision_cfg={"subject_token": True}, init_logit_scale=1.0)
    assert model.visual.subject_token and model.config["vision_cfg"]["patch_size"] == 16
    assert model.logit_scale.item() == pytest.approx(1.0)
    assert get_model_config("tiny-vit")["vision_cfg"]["subject_token"] is False  # shipped config untouched
    with pytest.raises(ValueError, match="vision_cfg"):
        create_model("tiny-vit", vision_cfg={"bogus_option": 1})


def test_save_checkpoint_round_trip(tmp_path):
    model = create_model("tiny-vit", vision_cfg={"subject_token": True}).eval()
    with torch.no_grad():
        model.logit_scale.fill_(3.0)
    path = save_checkpoint(model, tmp_path / "run" / "model.safetensors", extra_metadata={"epoch": 3})
    assert not [p for p in path.parent.iterdir() if p.name != "model.safetensors"]  # no temp file left
    with safe_open(str(path), "pt") as handle:
        meta = handle.metadata()
    assert json.loads(meta["affectclip_config"]) == model.config and meta["epoch"] == "3"
    loaded = create_model(path).eval()
    images, tokens = _inputs()
    mask = torch.zeros(2, 64, 64)
    mask[:, 10:40, 20:50] = 1
    with torch.no_grad():
        assert torch.equal(loaded.encode_image(images, mask=mask), model.encode_image(images, mask=mask))
        assert torch.equal(loaded.encode_text(tokens), model.encode_text(tokens))
    assert loaded.logit_scale.item() == 3.0 and loaded.config == model.config
    with pytest.raises(ValueError, match=".safetensors"):
        save_checkpoint(model, tmp_path / "model.pt")


def test_save_checkpoint_in_fp16_halves_the_file_and_loads_the_rounded_weights(tmp_path):
    """A shipped model is stored in fp16: the loaded fp32 model must equal the original with its weights rounded
    to fp16 (nothing else lost), and BatchNorm's integer step counters keep their type."""
    model = create_model("tiny-cnn-minilm", external_weights=["text.bert."]).eval()
    full = save_checkpoint(model, tmp_path / "fp32.safetensors")
    half = save_checkpoint(model, tmp_path / "fp16.safetensors", dtype=torch.float16)
    assert half.stat().st_size < 0.55 * full.stat().st_size
    with safe_open(str(half), "pt") as handle:
        dtypes = {k: handle.get_tensor(k).dtype for k in handle.keys()}
    assert dtypes["visual.backbone.features.1.num_batches_tracked"] == torch.int64
    assert {d for k, d in dtypes.items() if "num_batches_tracked" not in k} == {torch.float16}
    loaded = create_model(half).eval()
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    with torch.no_grad():
        for value in model.state_dict().values():
            if value.is_floating_point():
                value.copy_(value.half().float())
        images = torch.rand(2, 3, 64, 64)
        assert torch.equal(loaded.encode_image(images), model.encode_image(images))
    with pytest.raises(ValueError, match="floating"):
        save_checkpoint(model, tmp_path / "int.safetensors", dtype=torch.int8)


def test_mismatched_state_dict_lists_keys(tmp_path):
    sd = create_model("tiny-vit").state_dict()
    sd.pop("visual.proj")
    sd["visual.extra_head.weight"] = torch.zeros(3)
    sd["text.text_projection"] = torch.zeros(64, 7)
    path = tmp_path / "bad.safetensors"
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    with pytest.raises(ValueError) as err:
        create_model("tiny-vit", pretrained=path)
    message = str(err.value)
    assert "visual.proj" in message and "visual.extra_head.weight" in message
    assert "text.text_projection" in message and "list_models()" in message


def test_foreign_checkpoint_inferred_with_quick_gelu_warning(testvectors_dir, caplog):
    path = testvectors_dir / "tiny-vit" / "open_clip_state_dict.safetensors"
    with caplog.at_level(logging.WARNING):
        model = create_model(path)
    assert "quick_gelu=True" in caplog.text
    cfg = model.config
    assert (cfg["embed_dim"], cfg["quick_gelu"]) == (32, False)
    assert {k: cfg["vision_cfg"][k] for k in ("image_size", "patch_size", "width", "layers")} == {
        "image_size": 64,
        "patch_size": 16,
        "width": 64,
        "layers": 2,
    }
    assert (cfg["text_cfg"]["context_length"], cfg["text_cfg"]["vocab_size"], cfg["text_cfg"]["layers"]) == (
        77,
        49408,
        2,
    )
    assert model.logit_scale.item() == pytest.approx(load_file(path)["logit_scale"].item())
    assert create_model(path, quick_gelu=True).config["quick_gelu"] is True


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::torch.jit.TracerWarning")
def test_wrapped_and_torchscript_checkpoints(tmp_path, testvectors_dir):
    reference = load_file(testvectors_dir / "tiny-vit" / "open_clip_state_dict.safetensors")
    wrapped = tmp_path / "emotionclip.pt"  # EmotionCLIP {"model": sd} around an EmoCLIP-style DDP dict
    torch.save({"model": {f"module.{k}": v for k, v in reference.items()}, "epoch": 2}, wrapped)
    assert set(load_state_dict(wrapped)) == set(reference)
    converted = convert_open_clip_state_dict(load_state_dict(wrapped))
    assert "text.token_embedding.weight" in converted and "visual.conv1.weight" in converted

    model = create_model("tiny-vit").eval()
    scripted = tmp_path / "openai.pt"
    torch.jit.trace_module(model, {"encode_image": (torch.randn(1, 3, 64, 64),)}).save(str(scripted))
    assert is_torchscript(scripted) and not is_torchscript(wrapped)
    sd = load_state_dict(scripted)
    assert infer_clip_config(sd, torchscript=True)["quick_gelu"] is True
    assert all(torch.equal(sd[k], v) for k, v in model.state_dict().items())


def test_tokenizer_follows_model_config(bpe_path):
    tok = get_tokenizer("tiny-vit", bpe_path=bpe_path, truncate_keep_eot=False)
    assert isinstance(tok, CLIPTokenizer) and tok.context_length == 77 and not tok.truncate_keep_eot
    model = create_model("tiny-vit").eval()
    with torch.no_grad():
        assert model.encode_text(tok(["a happy face", "a sad face"])).shape == (2, 64)


def test_wordpiece_model_runs_offline():
    pytest.importorskip("affectclip.models.tokenizer_wordpiece", reason="WordPiece tokenizer not written yet")
    model = create_model("tiny-vit-wordpiece").eval()
    tok = get_tokenizer(model)
    ids = tok(["a photo of a happy face"])
    assert ids.shape == (1, 32)
    with torch.no_grad():
        assert model.encode_text(ids).shape == (1, 64)


def test_precision_and_transforms():
    model = create_model("tiny-vit", precision="bf16")
    assert model.visual.conv1.weight.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="precision"):
        create_model("tiny-vit", precision="fp8")
    from affectclip.data.transforms import create_transforms

    tf = create_transforms(model)
    assert tf.image_size == model.config["vision_cfg"]["image_size"]
    assert create_transforms(get_model_config("tiny-vit")).image_size == tf.image_size
    with pytest.raises(TypeError, match="get_model_config"):
        create_transforms("tiny-vit")
