"""Image preprocessing and train augmentation without torchvision (it cannot be imported here, ecosystem.md §5.1).

`ImageTransform` turns a PIL image, a numpy array (HxW, HxWx1/3/4, uint8/uint16/float in [0,1]) or a torch tensor
([H,W] or [C,H,W], uint8 or float in [0,1]) into a normalised float32 [3,S,S] tensor:

* eval, ``resize_mode="shortest"``: resize the short side to S, centre crop S×S (torchvision's Resize + CenterCrop
  arithmetic, as open_clip preprocesses); ``"squash"``: resize straight to S×S (Exp-CLIP protocol, no crop).
* train: random resized crop (scale, ratio) -> optional rotation -> horizontal flip -> brightness/contrast jitter
  -> random grayscale; every option defaults to off except the crop (scale 0.8-1.0). `data/batch_augment.py`
  applies the same train operations to whole uint8 batches on the training device. ``grayscale=1`` converts
  every image, in eval as well: the setting for a model trained only on grey faces (config `preprocess.grayscale`).

Augmentation parameters are sampled by `sample_params` and applied by `apply`, so a video clip can share one set of
parameters across its frames (consistent, the clean default) or draw one per frame (EmotionCLIP as released). A
subject mask given next to the image goes through the same geometric operations and comes back as {0,1} [S,S].

Randomness comes from `generator` when given (reproducible in one process) or torch's global RNG, which DataLoader
seeds differently in every worker — so leave `generator=None` in multi-worker loading, or every worker would
repeat the same augmentations.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from affectclip.core.normalization import CLIP_MEAN, CLIP_STD

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NORMALIZATIONS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "clip": (CLIP_MEAN, CLIP_STD),
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
    "half": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),  # EfficientNet-Lite (TF's 127/128 scaling)
}
_GREY_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R 601-2 luma, as PIL's convert("L")


def image_to_tensor(image: Any) -> torch.Tensor:
    """PIL / numpy (HWC) / torch (CHW) image -> float32 [3,H,W] in [0,1]; grey replicated, alpha dropped."""
    if hasattr(image, "convert") and hasattr(image, "mode"):  # PIL.Image without importing PIL eagerly
        image = np.asarray(image.convert("RGB") if image.mode not in ("L", "RGB") else image)
    if isinstance(image, np.ndarray):
        if not image.flags.writeable:  # e.g. np.asarray(PIL image); torch.from_numpy warns on read-only memory
            image = image.copy()
        if image.ndim == 3:
            image = image.transpose(2, 0, 1)
        if image.dtype == np.uint16:
            image = image.astype(np.float32) / 65535.0
        image = torch.from_numpy(np.ascontiguousarray(image))
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"expected a PIL image, numpy array or torch tensor, got {type(image).__name__}")
    if image.ndim == 2:
        image = image.unsqueeze(0)
    if image.ndim != 3 or image.shape[0] not in (1, 3, 4):
        raise ValueError(
            f"cannot interpret image of shape {tuple(image.shape)}: numpy arrays must be HxW or HxWx{{1,3,4}}, "
            "torch tensors HxW or {1,3,4}xHxW"
        )
    if min(image.shape[1:]) == 0:
        raise ValueError(f"image has an empty side: shape {tuple(image.shape)}")
    if image.dtype == torch.uint8:
        image = image.float() / 255.0
    elif image.is_floating_point():
        image = image.float()
        if not torch.isfinite(image).all():
            raise ValueError("image contains NaN or infinite values")
        if image.min() < 0.0 or image.max() > 1.0:
            raise ValueError(
                f"float images must be in [0, 1], got range [{image.min():.3g}, {image.max():.3g}]; "
                "pass uint8 data or divide by 255"
            )
    else:
        raise TypeError(f"unsupported image dtype {image.dtype}; use uint8 or float in [0, 1]")
    if image.shape[0] == 1:
        image = image.expand(3, -1, -1)
    return image[:3]


def mask_to_tensor(mask: Any) -> torch.Tensor:
    """PIL / numpy / torch mask [H,W] (bool, integer or float; non-zero = subject) -> float32 [1,H,W] in {0,1}."""
    if hasattr(mask, "convert") and hasattr(mask, "mode"):
        mask = np.asarray(mask.convert("L"))
    if isinstance(mask, np.ndarray):
        mask = torch.from_numpy(np.array(mask))
    if not isinstance(mask, torch.Tensor) or mask.ndim != 2:
        shape = tuple(mask.shape) if hasattr(mask, "shape") else type(mask).__name__
        raise ValueError(f"subject mask must be a 2-d [H,W] array, got {shape}")
    return (mask != 0).float().unsqueeze(0)


@dataclass(frozen=True)
class TransformParams:
    """One draw of the augmentation; ``crop=None`` means the deterministic eval geometry."""

    crop: tuple[int, int, int, int] | None = None  # top, left, height, width in source pixels
    hflip: bool = False
    angle: float = 0.0  # degrees
    brightness: float = 1.0
    contrast: float = 1.0
    grayscale: bool = False


class ImageTransform:
    """Callable preprocessing: ``t(image) -> [3,S,S]``; ``t(image, mask) -> ([3,S,S], [S,S])``."""

    def __init__(
        self,
        image_size: int,
        mean: Sequence[float] = CLIP_MEAN,
        std: Sequence[float] = CLIP_STD,
        interpolation: str = "bicubic",
        resize_mode: str = "shortest",
        train: bool = False,
        scale: tuple[float, float] = (0.8, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        hflip: float = 0.0,
        rotation: float = 0.0,
        brightness: float = 0.0,
        contrast: float = 0.0,
        grayscale: float = 0.0,
        consistent_clips: bool = True,
        generator: torch.Generator | None = None,
    ) -> None:
        if image_size <= 0:
            raise ValueError(f"image_size must be positive, got {image_size}")
        if interpolation not in ("bicubic", "bilinear"):
            raise ValueError(f"interpolation must be 'bicubic' or 'bilinear', got {interpolation!r}")
        if resize_mode not in ("shortest", "squash"):
            raise ValueError(f"resize_mode must be 'shortest' or 'squash', got {resize_mode!r}")
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"mean and std need 3 values each with std > 0, got {mean} / {std}")
        if not (0 < scale[0] <= scale[1] <= 1) or not (0 < ratio[0] <= ratio[1]):
            raise ValueError(f"need 0 < scale[0] <= scale[1] <= 1 and 0 < ratio[0] <= ratio[1], got {scale}, {ratio}")
        for name, p in (("hflip", hflip), ("grayscale", grayscale)):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} is a probability in [0, 1], got {p}")
        if rotation < 0 or not 0 <= brightness < 1 or not 0 <= contrast < 1:
            raise ValueError(f"need rotation >= 0 and brightness/contrast in [0, 1), got {rotation}, {brightness}, {contrast}")
        self.image_size = int(image_size)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        self.interpolation = interpolation
        self.resize_mode = resize_mode
        self.train = bool(train)
        self.scale, self.ratio = tuple(scale), tuple(ratio)
        self.hflip, self.rotation, self.grayscale = float(hflip), float(rotation), float(grayscale)
        self.brightness, self.contrast = float(brightness), float(contrast)
        self.consistent_clips, self.generator = bool(consistent_clips), generator

    def __repr__(self) -> str:
        aug = (f", scale={self.scale}, hflip={self.hflip}, rotation={self.rotation}, brightness={self.brightness}, "
               f"contrast={self.contrast}, grayscale={self.grayscale}") if self.train else ""
        return (f"ImageTransform(size={self.image_size}, {self.interpolation}, {self.resize_mode}, "
                f"train={self.train}{aug})")

    # ---------------------------------------------------------------- parameters
    def _uniform(self, low: float, high: float, generator: torch.Generator | None) -> float:
        return low + (high - low) * float(torch.rand((), generator=generator))

    def sample_params(self, height: int, width: int, generator: torch.Generator | None = None) -> TransformParams:
        """Draw augmentation parameters for an image of the given size (deterministic eval params when not train)."""
        if not self.train:  # grayscale=1 means "always grey" (a model trained on grey faces), so eval too
            return TransformParams(grayscale=self.grayscale >= 1.0)
        g = generator if generator is not None else self.generator
        return TransformParams(
            crop=self._sample_crop(height, width, g),
            hflip=self._uniform(0, 1, g) < self.hflip,
            angle=self._uniform(-self.rotation, self.rotation, g) if self.rotation else 0.0,
            brightness=self._uniform(1 - self.brightness, 1 + self.brightness, g) if self.brightness else 1.0,
            contrast=self._uniform(1 - self.contrast, 1 + self.contrast, g) if self.contrast else 1.0,
            grayscale=self._uniform(0, 1, g) < self.grayscale,
        )

    def _sample_crop(self, height: int, width: int, g: torch.Generator | None) -> tuple[int, int, int, int]:
        """torchvision's RandomResizedCrop box: 10 tries at a random area and log-uniform aspect, else centre crop."""
        area = height * width
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target = area * self._uniform(*self.scale, g)
            aspect = math.exp(self._uniform(*log_ratio, g))
            w = int(round(math.sqrt(target * aspect)))
            h = int(round(math.sqrt(target / aspect)))
            if 0 < w <= width and 0 < h <= height:
                top = int(torch.randint(0, height - h + 1, (), generator=g))
                left = int(torch.randint(0, width - w + 1, (), generator=g))
                return top, left, h, w
        return self.fallback_crop(height, width)

    def fallback_crop(self, height: int, width: int) -> tuple[int, int, int, int]:
        """RandomResizedCrop's box when no random try fits: the centre crop closest to the allowed aspect ratios."""
        in_ratio = width / height
        if in_ratio < self.ratio[0]:
            w, h = width, int(round(width / self.ratio[0]))
        elif in_ratio > self.ratio[1]:
            h, w = height, int(round(height * self.ratio[1]))
        else:
            w, h = width, height
        return (height - h) // 2, (width - w) // 2, h, w

    # ---------------------------------------------------------------- application
    def _resize(self, x: torch.Tensor, size: tuple[int, int], is_mask: bool) -> torch.Tensor:
        if tuple(x.shape[-2:]) == size:
            return x
        mode = "bilinear" if is_mask else self.interpolation
        out = F.interpolate(x.unsqueeze(0), size=size, mode=mode, align_corners=False, antialias=True)[0]
        return (out >= 0.5).float() if is_mask else out.clamp_(0.0, 1.0)

    def _geometry(self, x: torch.Tensor, params: TransformParams, is_mask: bool) -> torch.Tensor:
        s = self.image_size
        if params.crop is not None:
            top, left, h, w = params.crop
            x = self._resize(x[:, top : top + h, left : left + w], (s, s), is_mask)
        elif self.resize_mode == "squash":
            x = self._resize(x, (s, s), is_mask)
        else:  # torchvision Resize(s) + CenterCrop(s)
            h, w = x.shape[-2:]
            short, long = (h, w) if h <= w else (w, h)
            new_long = int(s * long / short)
            size = (s, new_long) if h <= w else (new_long, s)
            x = self._resize(x, size, is_mask)
            top, left = int(round((size[0] - s) / 2.0)), int(round((size[1] - s) / 2.0))
            x = x[:, top : top + s, left : left + s]
        if params.angle:
            x = _rotate(x, params.angle, "nearest" if is_mask else "bilinear")
        if params.hflip:
            x = x.flip(-1)
        return x

    def apply(self, image: Any, params: TransformParams, mask: Any = None) -> Any:
        """Apply one parameter draw: -> [3,S,S], or ([3,S,S], [S,S]) when a subject mask is given."""
        return self._apply(image_to_tensor(image), params, mask)

    def __call__(self, image: Any, mask: Any = None) -> Any:
        x = image_to_tensor(image)
        return self._apply(x, self.sample_params(*x.shape[1:]), mask)

    def _apply(self, x: torch.Tensor, params: TransformParams, mask: Any) -> Any:
        size = tuple(x.shape[1:])
        if params.crop is not None:
            top, left, h, w = params.crop
            if top < 0 or left < 0 or top + h > size[0] or left + w > size[1]:
                raise ValueError(f"crop {params.crop} does not fit an image of size {size}; "
                                 "sample parameters for this image size (frames of a clip must share one size)")
        x = self._geometry(x, params, is_mask=False)
        grey = torch.tensor(_GREY_WEIGHTS).view(3, 1, 1)
        if params.brightness != 1.0:
            x = (x * params.brightness).clamp_(0.0, 1.0)
        if params.contrast != 1.0:
            grey_mean = (x * grey).sum(0).mean()
            x = ((x - grey_mean) * params.contrast + grey_mean).clamp_(0.0, 1.0)
        if params.grayscale:
            x = (x * grey).sum(0, keepdim=True).expand(3, -1, -1)
        x = ((x - self.mean) / self.std).contiguous()
        if mask is None:
            return x
        m = mask_to_tensor(mask)
        if tuple(m.shape[1:]) != size:
            raise ValueError(f"subject mask size {tuple(m.shape[1:])} differs from image size {size}; "
                             "a mask must be drawn on the frame it belongs to")
        return x, self._geometry(m, params, is_mask=True)[0]

    def transform_clip(self, frames: Sequence[Any], consistent: bool | None = None,
                       masks: Sequence[Any] | None = None) -> Any:
        """Frames (a sequence, or a [T,H,W,C] array) -> [T,3,S,S] (+ masks [T,S,S]).

        ``consistent=True`` shares one parameter draw across the clip (a face does not jump between frames);
        ``False`` draws per frame, as EmotionCLIP's released loader does; None = the transform's `consistent_clips`
        (config `data.consistent_clip_augment`).
        """
        consistent = self.consistent_clips if consistent is None else consistent
        if len(frames) == 0:
            raise ValueError("transform_clip got an empty clip")
        if masks is not None and len(masks) != len(frames):
            raise ValueError(f"got {len(masks)} masks for {len(frames)} frames")
        tensors = [image_to_tensor(f) for f in frames]
        shared = self.sample_params(*tensors[0].shape[1:])
        outs = [
            self._apply(x, shared if consistent else self.sample_params(*x.shape[1:]), None if masks is None else masks[i])
            for i, x in enumerate(tensors)
        ]
        if masks is None:
            return torch.stack(outs)
        return torch.stack([o[0] for o in outs]), torch.stack([o[1] for o in outs])


def create_transforms(model_or_config: Any, train: bool = False, **augment: Any) -> ImageTransform:
    """The image transform matching a model's input size and normalisation (train=True adds augmentation).

    Takes the model (anything with a `.config` dict, as `create_model` builds) or its config dict; for a config
    name or checkpoint path, pass `affectclip.models.factory.get_model_config(name)` (data/ never imports models/).
    """
    config = getattr(model_or_config, "config", model_or_config)
    if not isinstance(config, Mapping) or not isinstance(config.get("vision_cfg"), Mapping):
        raise TypeError(
            f"create_transforms takes a model built by create_model() or its config dict, got "
            f"{type(model_or_config).__name__}; for a name or path use get_model_config(name) first"
        )
    pre = config.get("preprocess") or {}
    if pre.get("grayscale"):  # trained on grey images: every input, colour photos included, is seen as grey
        augment = {**augment, "grayscale": 1.0}
    return ImageTransform(
        image_size=config["vision_cfg"]["image_size"],
        mean=pre.get("mean", CLIP_MEAN),
        std=pre.get("std", CLIP_STD),
        interpolation=pre.get("interpolation", "bicubic"),
        resize_mode=pre.get("resize_mode", "shortest"),
        train=train,
        **augment,
    )


def _rotate(x: torch.Tensor, angle: float, mode: str) -> torch.Tensor:
    """Rotate a square [C,S,S] tensor by `angle` degrees about its centre, filling uncovered corners with 0."""
    rad = math.radians(angle)
    cos, sin = math.cos(rad), math.sin(rad)
    theta = torch.tensor([[[cos, -sin, 0.0], [sin, cos, 0.0]]], dtype=x.dtype)
    grid = F.affine_grid(theta, [1, *x.shape], align_corners=False)
    return F.grid_sample(x.unsqueeze(0), grid, mode=mode, padding_mode="zeros", align_corners=False)[0]
