"""ImageTransform: input kinds, normalisation, eval geometry, seeded augmentation, masks and clips."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from affectclip.data.transforms import (
    CLIP_MEAN,
    CLIP_STD,
    IMAGENET_MEAN,
    NORMALIZATIONS,
    ImageTransform,
    TransformParams,
)

RAW = {
    "mean": (0.0, 0.0, 0.0),
    "std": (1.0, 1.0, 1.0),
}  # identity normalisation: outputs are pixel values in [0,1]


def _thirds(h: int = 60, w: int = 180) -> np.ndarray:
    """Red | green | blue vertical thirds."""
    img = np.zeros((h, w, 3), np.uint8)
    for i in range(3):
        img[:, i * w // 3 : (i + 1) * w // 3, i] = 255
    return img


@pytest.mark.parametrize(
    "image",
    [
        Image.fromarray(_thirds()),
        Image.fromarray(_thirds()).convert("RGBA"),
        _thirds(),
        np.dstack([_thirds(), np.full((60, 180, 1), 7, np.uint8)]),  # RGBA array: alpha dropped
        torch.from_numpy(_thirds()).permute(2, 0, 1).contiguous(),
        torch.from_numpy(_thirds()).permute(2, 0, 1).float() / 255,
    ],
    ids=["pil", "pil-rgba", "np-rgb", "np-rgba", "torch-uint8", "torch-float"],
)
def test_every_input_kind_gives_the_same_float32_tensor(image):
    out = ImageTransform(32, **RAW)(image)
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32
    # shortest-side resize + centre crop keeps only the green middle third
    assert torch.allclose(out[:, :, 8:24].mean(dim=(1, 2)), torch.tensor([0.0, 1.0, 0.0]), atol=1e-3)


def test_grey_images_are_replicated_to_three_channels():
    grey = np.random.default_rng(0).integers(0, 256, (48, 48), dtype=np.uint8)
    for image in (grey, Image.fromarray(grey), torch.from_numpy(grey)):
        out = ImageTransform(48, **RAW)(image)
        assert out.shape == (3, 48, 48)
        assert torch.equal(out[0], out[1]) and torch.equal(out[1], out[2])
        assert torch.allclose(
            out[0], torch.from_numpy(grey).float() / 255, atol=1e-6
        )  # same size: no resampling


def test_normalisation_uses_the_given_statistics():
    image = np.full((20, 20, 3), 128, np.uint8)
    for name, (mean, std) in NORMALIZATIONS.items():
        out = ImageTransform(16, mean=mean, std=std)(image)
        expected = (128 / 255 - torch.tensor(mean)) / torch.tensor(std)
        assert torch.allclose(out.mean(dim=(1, 2)), expected, atol=1e-4), name
    assert NORMALIZATIONS["clip"] == (CLIP_MEAN, CLIP_STD) and NORMALIZATIONS["imagenet"][0] == IMAGENET_MEAN


def test_squash_keeps_the_whole_frame_while_shortest_crops_it():
    squash = ImageTransform(30, resize_mode="squash", **RAW)(_thirds())
    assert squash[0, :, :8].mean() > 0.99 and squash[2, :, -8:].mean() > 0.99  # red left, blue right survive
    shortest = ImageTransform(30, **RAW)(_thirds())
    assert shortest[0, :, 2:-2].max() < 0.01 and shortest[2, :, 2:-2].max() < 0.01  # only bicubic edge bleed


def test_eval_is_deterministic_and_close_to_pil_resampling():
    skimage = pytest.importorskip("skimage.data")
    image = Image.fromarray(skimage.chelsea())  # 451x300
    t = ImageTransform(64, **RAW)
    out = t(image)
    assert torch.equal(out, t(image))
    w, h = image.size
    ref = image.resize(
        (int(64 * w / h), 64), Image.BICUBIC
    )  # torchvision/open_clip: PIL resize, then centre crop
    left = int(round((ref.size[0] - 64) / 2))
    ref = torch.from_numpy(np.array(ref.crop((left, 0, left + 64, 64)))).permute(2, 0, 1).float() / 255
    assert (out - ref).abs().mean() < 0.005  # a one-pixel shift alone gives 0.046


def test_seeded_train_augmentation_is_reproducible():
    image = np.random.default_rng(1).integers(0, 256, (80, 100, 3), dtype=np.uint8)
    options = {
        "train": True,
        "scale": (0.3, 1.0),
        "hflip": 0.5,
        "rotation": 15,
        "brightness": 0.3,
        "contrast": 0.3,
        "grayscale": 0.2,
    }

    def run(seed: int) -> torch.Tensor:
        t = ImageTransform(32, generator=torch.Generator().manual_seed(seed), **options)
        return torch.stack([t(image) for _ in range(4)])

    assert torch.equal(run(0), run(0))
    assert not torch.equal(run(0), run(1))


def test_mask_follows_horizontal_flip():
    image = np.zeros((40, 40, 3), np.uint8)
    image[:, :20] = 255
    mask = np.zeros((40, 40), bool)
    mask[:, :20] = True
    t = ImageTransform(20, train=True, scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=1.0, **RAW)
    out, out_mask = t(image, mask)
    assert out_mask.shape == (20, 20) and set(out_mask.unique().tolist()) <= {0.0, 1.0}
    assert out_mask[:, 10:].min() == 1 and out_mask[:, :10].max() == 0  # left half moved to the right
    assert out[0, :, 10:].mean() > 0.99 and out[0, :, :10].mean() < 0.01  # ... together with the image


def test_mask_follows_random_crop_and_rotation():
    rng = np.random.default_rng(2)
    t = ImageTransform(
        40,
        train=True,
        scale=(0.2, 0.6),
        hflip=0.5,
        rotation=30,
        generator=torch.Generator().manual_seed(3),
        **RAW,
    )
    for _ in range(5):
        image = np.zeros((90, 120, 3), np.uint8)
        top, left = rng.integers(0, 40), rng.integers(0, 60)
        image[top : top + 50, left : left + 60] = 255
        out, out_mask = t(image, mask=image[..., 0] > 0)
        agreement = ((out[0] > 0.5).float() == out_mask).float().mean()
        assert agreement > 0.95


def test_mask_of_a_different_size_is_rejected():
    with pytest.raises(ValueError, match="mask size"):
        ImageTransform(16)(np.zeros((20, 30, 3), np.uint8), mask=np.zeros((30, 20), bool))


def test_clip_parameters_shared_or_independent():
    frame = np.random.default_rng(4).integers(0, 256, (50, 60, 3), dtype=np.uint8)
    t = ImageTransform(24, train=True, scale=(0.2, 0.5), generator=torch.Generator().manual_seed(0))
    consistent = t.transform_clip([frame] * 4, consistent=True)
    assert consistent.shape == (4, 3, 24, 24)
    assert all(torch.equal(consistent[0], f) for f in consistent[1:])
    independent = t.transform_clip(np.stack([frame] * 4), consistent=False)
    assert not all(torch.equal(independent[0], f) for f in independent[1:])
    frames, masks = t.transform_clip([frame] * 3, masks=[np.ones((50, 60), bool)] * 3)
    assert frames.shape == (3, 3, 24, 24) and masks.shape == (3, 24, 24)


def test_apply_with_explicit_params_and_colour_ops():
    image = np.full((30, 30, 3), 100, np.uint8)
    image[:, :, 0] = 200
    t = ImageTransform(30, train=True, **RAW)
    bright = t.apply(image, TransformParams(crop=(0, 0, 30, 30), brightness=1.2))
    assert torch.allclose(bright[1], torch.full((30, 30), 120 / 255), atol=1e-5)
    grey = t.apply(image, TransformParams(crop=(0, 0, 30, 30), grayscale=True))
    assert torch.equal(grey[0], grey[2])
    with pytest.raises(ValueError, match="does not fit"):
        t.apply(image, TransformParams(crop=(10, 10, 30, 30)))


@pytest.mark.parametrize(
    ("image", "error", "match"),
    [
        (torch.full((3, 8, 8), 2.0), ValueError, r"\[0, 1\]"),
        (torch.full((3, 8, 8), float("nan")), ValueError, "NaN"),
        (np.zeros((8, 8, 2), np.uint8), ValueError, "cannot interpret"),
        (np.zeros((0, 8, 3), np.uint8), ValueError, "empty"),
        ("image.jpg", TypeError, "PIL image"),
    ],
)
def test_bad_images_raise_clear_errors(image, error, match):
    with pytest.raises(error, match=match):
        ImageTransform(8)(image)


def test_bad_options_raise():
    with pytest.raises(ValueError, match="resize_mode"):
        ImageTransform(8, resize_mode="letterbox")
    with pytest.raises(ValueError, match="hflip"):
        ImageTransform(8, hflip=1.5)
