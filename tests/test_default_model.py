"""The shipped default model: it loads from the package alone, is small, and recognises real FER+ faces by text.

The FER+ check uses a handful of FER+ *valid* images (never trained on) read from the shared data folder at test
time; no FER2013 image is stored in the repository.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

import affectclip
from affectclip.data.ferplus import FERPLUS_CLASSES

DEFAULT = Path(affectclip.__file__).resolve().parent / "assets" / "default_model.safetensors"
PER_CLASS = 6  # valid images per class for the four classes with enough unanimous examples
CLASSES = ("neutral", "happiness", "surprise", "anger")



@pytest.fixture(scope="module")
def model():
    if not DEFAULT.is_file():
        pytest.skip("no shipped default model in affectclip/assets (scripts/train_default_model.sh makes it)")
    torch.manual_seed(0)
    return affectclip.create_model(DEFAULT).eval()


def test_external_weights_are_left_out_and_trained_ones_are_refused(tmp_path):
    """`external_weights` keeps package-provided frozen weights out of a checkpoint (how the default stays small),
    but never silently drops trainable parameters."""
    from safetensors import safe_open

    m = affectclip.create_model("tiny-vit-wordpiece", external_weights=["text."])
    with pytest.raises(ValueError, match="trainable"):
        affectclip.save_checkpoint(m, tmp_path / "bad.safetensors")
    m.text.requires_grad_(False)
    path = affectclip.save_checkpoint(m, tmp_path / "m.safetensors")
    with safe_open(str(path), framework="pt") as fh:
        keys = list(fh.keys())
    assert keys and not any(k.startswith("text.") for k in keys)
    loaded = affectclip.create_model(path).eval()
    x = torch.rand(1, 3, m.config["vision_cfg"]["image_size"], m.config["vision_cfg"]["image_size"])
    assert torch.allclose(loaded.encode_image(x), m.eval().encode_image(x), atol=1e-6)


def test_varied_ferplus_captions_vary_words_but_never_use_the_synonym_test_words():
    from affectclip.data.captions import DISTRIBUTION_TEMPLATES, varied_caption_from_distribution
    from affectclip.data.ferplus import EVAL_SYNONYMS, TRAIN_ADJECTIVES, TRAIN_SYNONYMS

    votes = [6, 3, 1, 0, 0, 0, 0, 0]
    caps = {varied_caption_from_distribution(votes, FERPLUS_CLASSES, f"row{i}", TRAIN_ADJECTIVES) for i in range(400)}
    assert len(caps) > len(DISTRIBUTION_TEMPLATES)  # templates x interchangeable adjectives
    assert varied_caption_from_distribution(votes, FERPLUS_CLASSES, "row7", TRAIN_ADJECTIVES) in caps  # deterministic
    text = " " + " ".join(c.replace(",", " ") for c in caps) + " "
    assert all(f" {w} " in text for w in ("happiness", "happy", *TRAIN_SYNONYMS["happiness"]))
    held_out = {w for words in EVAL_SYNONYMS.values() for w in words}
    assert not held_out & {w for words in TRAIN_ADJECTIVES.values() for w in words}
    # not even a relative of a held-out word (furious/fury, sneering/sneer): no shared 5-letter word prefix
    stems = {part[:5] for w in held_out for part in w.split()}
    assert not [w for words in TRAIN_ADJECTIVES.values() for w in words for part in w.split() if part[:5] in stems]
    assert not [w for w in held_out if f" {w} " in text]


def test_shipped_file_is_small_and_self_describing(model):
    assert DEFAULT.stat().st_size <= 20 * 2**20
    text = model.config["text_cfg"]
    assert text["type"] == "minilm" and text["trainable"] is True
    # the locked MiniLM layers come from their package; the tuned top layers are in the file, stored in fp16
    tuned = list(range(6 - text["trainable_layers"], 6))
    with safe_open(str(DEFAULT), framework="pt") as f:
        keys = list(f.keys())
        stored = {f.get_tensor(k).dtype for k in keys if "num_batches_tracked" not in k}
    assert all(any(k.startswith(f"text.bert.encoder.layer.{i}.") for k in keys) for i in tuned)
    locked = ("text.bert.embeddings.", *(f"text.bert.encoder.layer.{i}." for i in range(tuned[0])))
    assert not any(k.startswith(locked) for k in keys)
    assert stored == {torch.float16} and all(p.dtype == torch.float32 for p in model.parameters())
    x = torch.rand(2, 3, model.config["vision_cfg"]["image_size"], model.config["vision_cfg"]["image_size"])
    f = model.encode_image(x)
    assert f.shape == (2, model.embed_dim) and torch.isfinite(f).all()


def _clear_valid_faces(ferplus_dir: Path) -> list[tuple[Path, int]]:
    """The first PER_CLASS valid images per class whose 10 crowd votes are nearly unanimous (>= 8)."""
    picked: dict[str, list[Path]] = {c: [] for c in CLASSES}
    with open(ferplus_dir / "labels.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            label = row["label"]
            if row["split"] == "valid" and label in picked and len(picked[label]) < PER_CLASS \
                    and int(row[f"votes_{label}"]) >= 8:
                picked[label].append(ferplus_dir / row["path"])
    return [(p, FERPLUS_CLASSES.index(c)) for c in CLASSES for p in picked[c]]


def test_zero_shot_on_real_ferplus_valid_faces(model, ferplus_dir):
    from PIL import Image

    from affectclip.eval.prompts import build_prompts
    from affectclip.eval.zeroshot import build_classifier, zero_shot_predict

    items = _clear_valid_faces(ferplus_dir)
    assert len(items) == PER_CLASS * len(CLASSES)
    tf = affectclip.create_transforms(model)
    images = torch.stack([tf(np.asarray(Image.open(p).convert("RGB"))) for p, _ in items])
    labels = torch.tensor([y for _, y in items])
    clf = build_classifier(model, affectclip.get_tokenizer(model), build_prompts(FERPLUS_CLASSES, "expclip5"))
    with torch.no_grad():
        pred = zero_shot_predict(model.encode_image(images), clf, model.logit_scale).argmax(1)
    accuracy = (pred == labels).float().mean().item()
    assert accuracy >= 0.6, f"zero-shot accuracy {accuracy:.2f} on clear FER+ valid faces (chance 0.125 over 8 classes)"


def test_colour_photo_astronaut_behaves(model):
    """A real colour photo (scikit-image's astronaut, public domain): the smiling face reads as happiness."""
    data = pytest.importorskip("skimage.data")
    face = data.astronaut()[55:205, 150:300]  # a FER-style tight crop of the face in the 512x512 photo
    em = affectclip.load(model, device="cpu")
    df = em.predict([face], detect_faces=False)
    probs = df[list(FERPLUS_CLASSES)].to_numpy(dtype=float)
    assert probs.shape == (1, len(FERPLUS_CLASSES)) and np.isfinite(probs).all()
    assert abs(probs.sum() - 1) < 1e-6
    assert df["top_label"].iloc[0] == "happiness", df[list(FERPLUS_CLASSES)].round(3).to_dict("records")


def test_readme_main_command_scores_the_example_photo(tmp_path, capsys):
    """`affectclip predict examples/astronaut.jpg --plot DIR` — the README's main command, as a user runs it."""
    from affectclip.cli import main

    if not DEFAULT.is_file():
        pytest.skip("no shipped default model in affectclip/assets")
    example = Path(__file__).resolve().parents[1] / "examples" / "astronaut.jpg"
    assert main(["predict", str(example), "--plot", str(tmp_path / "plots")]) == 0
    out = capsys.readouterr().out
    header, row = out.splitlines()[:2]
    assert all(c in header for c in FERPLUS_CLASSES) and "top_label" in header
    assert " happiness " in row and row.rstrip().endswith("ok"), out
    assert [p.suffix for p in (tmp_path / "plots").iterdir()] == [".png"]


def test_loaded_default_model_is_inference_only_and_reuses_its_prompt_vectors():
    """`affectclip.load()` owns its model: no parameter needs gradients, so the partly tuned MiniLM caches sentence
    vectors and a label set seen before is not encoded again (the cached vectors equal a fresh encoding)."""
    if not DEFAULT.is_file():
        pytest.skip("no shipped default model in affectclip/assets")
    em = affectclip.load(device="cpu")
    assert not any(p.requires_grad for p in em.model.parameters())
    words = ["a photo of a joyful face", "a photo of a furious face", "a photo of a calm face"]
    first = em.embed_text(words)
    assert len(em.model.text._cache) == len(words)
    again = em.embed_text(list(reversed(words)))
    assert len(em.model.text._cache) == len(words)
    np.testing.assert_allclose(again[::-1], first, atol=1e-6)
    em.model.text._cache.clear()
    np.testing.assert_allclose(em.embed_text(words), first, atol=1e-6)
