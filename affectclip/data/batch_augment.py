"""Batch augmentation: stage each image cheaply per sample, augment whole batches where the batch lives.

Per-sample augmentation (`ImageTransform` in the DataLoader) costs about 0.35 ms per 64 px face on a CPU core, a
third of a tiny model's training step, and on a GPU it keeps the CPU busy while the accelerator waits. With
`data.batch_augment=true` the dataset only *stages* each image: the deterministic eval geometry at the stage size,
kept as uint8 [3,s,s] (`StagedTransform`; an image already s×s is passed through untouched). `BatchAugment` then
draws one augmentation per sample (per clip when clips are consistent) and applies the same operations as
`ImageTransform`, in a handful of batched tensor ops on the batch's device:

* random resized crop + horizontal flip: separable resampling, ``out = Wy · x · Wxᵀ``, with each sample's row and
  column weight matrices taken from `F.interpolate` itself, so a given parameter draw gives the per-sample path's
  pixels up to float rounding (tested);
* rotation: one `affine_grid` / `grid_sample` over the rotated samples only;
* brightness, contrast, grayscale and normalisation: broadcast arithmetic, in place. Without rotation, brightness
  is folded into ``Wy``; the contrast blend and the normalisation are one multiply-add.

On a 2-core CPU this costs ~1.2 ms for 32 faces of 64 px (`benchmarks/train_step.py` measures it inside the loop).

What differs from per-sample augmentation: the crop box is drawn on the staged image, not on the original file. For
square images staged at their own size (face crops) the two are the same distribution; a larger or non-square image
is first brought to the stage size by the eval geometry (shortest side + centre crop, or squash), so its random crops
see that square. Parameters come from torch's global CPU RNG (or a given generator), so `--resume` replays them with
the rest of the saved RNG state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from affectclip.data.transforms import _GREY_WEIGHTS, ImageTransform, mask_to_tensor


class StagedTransform:
    """Per-sample half of batch augmentation: image (+ mask) -> uint8 [3,s,s] (+ uint8 {0,1} [s,s]), no randomness.

    Drop-in for an `ImageTransform` in the datasets (``t(image[, mask])`` and ``t.transform_clip(frames, masks=)``).
    """

    def __init__(self, stage_size: int, interpolation: str = "bicubic", resize_mode: str = "shortest") -> None:
        self.stage_size = int(stage_size)
        self._geometry = ImageTransform(stage_size, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),
                                        interpolation=interpolation, resize_mode=resize_mode, train=False)

    def __repr__(self) -> str:
        return f"StagedTransform(size={self.stage_size}, {self._geometry.interpolation}, {self._geometry.resize_mode})"

    def __call__(self, image: Any, mask: Any = None) -> Any:
        s = self.stage_size
        if isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.shape[:2] == (s, s) and (
                image.ndim == 2 or image.shape[2] in (1, 3, 4)):  # already staged size: no float round trip
            x = torch.from_numpy(np.array(image[..., :3] if image.ndim == 3 else image[..., None]))  # own, writable
            x = x.permute(2, 0, 1).expand(3, -1, -1) if x.shape[-1] == 1 else x.permute(2, 0, 1)
            x = x.contiguous()
            if mask is None:
                return x
            m = mask_to_tensor(mask)[0]
            if tuple(m.shape) != (s, s):
                raise ValueError(f"subject mask size {tuple(m.shape)} differs from image size {(s, s)}; "
                                 "a mask must be drawn on the frame it belongs to")
            return x, m.to(torch.uint8)
        out = self._geometry(image, mask)
        if mask is None:
            return _to_uint8(out)
        return _to_uint8(out[0]), out[1].to(torch.uint8)

    def transform_clip(self, frames: Any, consistent: bool | None = None, masks: Any = None) -> Any:
        """Frames -> uint8 [T,3,s,s] (+ masks [T,s,s]); `consistent` is decided later, by `BatchAugment`."""
        if len(frames) == 0:
            raise ValueError("transform_clip got an empty clip")
        if masks is not None and len(masks) != len(frames):
            raise ValueError(f"got {len(masks)} masks for {len(frames)} frames")
        if masks is None:
            return torch.stack([self(f) for f in frames])
        outs = [self(f, m) for f, m in zip(frames, masks, strict=True)]
        return torch.stack([o[0] for o in outs]), torch.stack([o[1] for o in outs])


def _to_uint8(x: torch.Tensor) -> torch.Tensor:
    return x.mul(255.0).round_().clamp_(0, 255).to(torch.uint8)


@dataclass
class BatchParams:
    """One augmentation draw per image, as tensors of length N (see `TransformParams` for the per-sample form)."""

    crop: torch.Tensor  # [N,4] int64: top, left, height, width in staged pixels
    hflip: torch.Tensor  # [N] bool
    angle: torch.Tensor  # [N] degrees
    brightness: torch.Tensor  # [N]
    contrast: torch.Tensor  # [N]
    grayscale: torch.Tensor  # [N] bool

    def repeat_interleave(self, t: int) -> BatchParams:
        """Each draw repeated t times (one draw shared by the t frames of a clip)."""
        return BatchParams(*(v.repeat_interleave(t, dim=0) for v in vars(self).values()))


class BatchAugment:
    """Batched twin of a train-mode `ImageTransform`: uint8 [B,3,H,W] or [B,T,3,H,W] -> normalised float32.

    Clips share one draw across their frames when the transform's `consistent_clips` is set, else draw per frame
    (EmotionCLIP as released).
    """

    def __init__(self, transform: ImageTransform) -> None:
        if not transform.train:
            raise ValueError("BatchAugment mirrors a train-mode ImageTransform (train=True)")
        self.t, self.consistent = transform, transform.consistent_clips
        self._banks: dict[tuple[int, str, str], torch.Tensor] = {}

    def __repr__(self) -> str:
        return f"BatchAugment({self.t!r}, consistent_clips={self.consistent})"

    # ---------------------------------------------------------------- parameters
    def sample_params(self, n: int, height: int, width: int, generator: torch.Generator | None = None) -> BatchParams:
        """n draws from the distribution of `ImageTransform.sample_params`, vectorised."""
        t = self.t

        def uniform(low: float, high: float, *shape: int) -> torch.Tensor:
            return low + (high - low) * torch.rand(*shape, generator=generator, dtype=torch.float64)

        return BatchParams(
            crop=self._sample_crops(n, height, width, uniform),
            hflip=uniform(0, 1, n) < t.hflip,
            angle=(uniform(-t.rotation, t.rotation, n) if t.rotation else torch.zeros(n, dtype=torch.float64)).float(),
            brightness=(uniform(1 - t.brightness, 1 + t.brightness, n) if t.brightness else torch.ones(n)).float(),
            contrast=(uniform(1 - t.contrast, 1 + t.contrast, n) if t.contrast else torch.ones(n)).float(),
            grayscale=uniform(0, 1, n) < t.grayscale,
        )

    def _sample_crops(self, n: int, height: int, width: int, uniform) -> torch.Tensor:
        """torchvision's RandomResizedCrop box, all samples at once: the first of 10 tries that fits, else centre."""
        t, tries = self.t, 10
        target = height * width * uniform(*t.scale, n, tries)
        aspect = torch.exp(uniform(math.log(t.ratio[0]), math.log(t.ratio[1]), n, tries))
        w = torch.sqrt(target * aspect).round().long()
        h = torch.sqrt(target / aspect).round().long()
        fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
        first = fits.long().argmax(dim=1, keepdim=True)  # index of the first fitting try (0 if none fits)
        w, h = w.gather(1, first)[:, 0], h.gather(1, first)[:, 0]
        top = (uniform(0, 1, n) * (height - h + 1)).floor().long()
        left = (uniform(0, 1, n) * (width - w + 1)).floor().long()
        crop = torch.stack([top, left, h, w], dim=1)
        fallback = ~fits.any(dim=1)
        if fallback.any():
            crop[fallback] = torch.tensor(t.fallback_crop(height, width))
        return crop

    # ---------------------------------------------------------------- application
    def __call__(self, images: torch.Tensor, masks: torch.Tensor | None = None,
                 generator: torch.Generator | None = None) -> Any:
        """Draw and apply: images uint8 [B,3,H,W] / [B,T,3,H,W] (+ masks [B,H,W] / [B,T,H,W]) -> float (+ masks)."""
        if images.dtype != torch.uint8 or images.ndim not in (4, 5) or images.shape[-3] != 3:
            raise ValueError(f"BatchAugment expects staged uint8 images [B,3,H,W] or clips [B,T,3,H,W], got "
                             f"{images.dtype} {tuple(images.shape)}; the training data must use StagedTransform "
                             "(data.batch_augment=true builds it)")
        n_draws = images.shape[0] if self.consistent else math.prod(images.shape[:-3])
        return self.apply(images, self.sample_params(n_draws, images.shape[-2], images.shape[-1], generator), masks)

    def apply(self, images: torch.Tensor, params: BatchParams, masks: torch.Tensor | None = None) -> Any:
        """Apply given draws -> what `ImageTransform.apply` gives each image for its draw.

        params holds one draw per image, or for clips [B,T,...] one per clip (shared by its frames) or one per frame.
        """
        *lead, _, height, width = images.shape
        n_images, n_draws = math.prod(lead), len(params.hflip)
        if n_images % n_draws or (n_draws != n_images and n_draws != lead[0]):
            raise ValueError(f"{n_draws} augmentation draws for images of shape {tuple(images.shape)}: need one per "
                             "image or one per clip")
        group = n_images // n_draws  # frames sharing one draw; geometry treats them as extra channels
        s, t = self.t.image_size, self.t
        # brightness is a gain, so it folds into the resampling weights, and its clamp into the geometry's, unless a
        # rotation comes between them (bilinear mixing of saturated pixels does not commute with the clamp)
        fold = bool(t.brightness) and not params.angle.any()
        gain = params.brightness.to(images.device).view(-1, 1, 1, 1) / 255 if fold else 1 / 255
        x = self._geometry(images.reshape(n_draws, group * 3, height, width), params, t.interpolation, gain,
                           ceiling=params.brightness.clamp(max=1.0) if fold else None)
        x = self._photometric(x.view(n_images, 3, s, s), params.repeat_interleave(group) if group > 1 else params,
                              brightness_done=fold)
        x = x.view(*lead, 3, s, s)
        if masks is None:
            return x
        m = self._geometry(masks.reshape(n_draws, group, height, width), params, "bilinear", 1.0, is_mask=True)
        return x, (m >= 0.5).float().reshape(*lead, s, s)

    def _photometric(self, x: torch.Tensor, params: BatchParams, brightness_done: bool) -> torch.Tensor:
        """Brightness, contrast (about each image's grey mean), grayscale and normalisation, as ImageTransform, in
        place and in few passes: the contrast blend and the normalisation are both per-channel affine maps, so they
        are one multiply-add, and the contrast clamp to [0, 1] becomes a clamp to the normalised [0, 1]. Options the
        transform does not use cost nothing. (Broadcast operands go through `mul_`/`add_`/`minimum`, which torch
        vectorises on CPU; `addcmul` and `clamp` with tensor bounds cost 6-9 times more there.)"""
        def per_image(v: torch.Tensor) -> torch.Tensor:
            return v.to(x.device).view(-1, 1, 1, 1)

        t = self.t
        grey = torch.tensor(_GREY_WEIGHTS, device=x.device).view(1, 3, 1, 1)
        if t.brightness and not brightness_done:
            x = x.mul_(per_image(params.brightness)).clamp_(0.0, 1.0)
        scale = offset = None  # the contrast blend x * scale + offset, still to apply (and clamp to [0, 1])
        if t.contrast:
            scale = per_image(params.contrast)
            offset = (x.mean(dim=(2, 3), keepdim=True) * grey).sum(1, keepdim=True) * (1 - scale)  # grey mean
        if t.grayscale:
            if scale is not None:
                x = x.mul_(scale).add_(offset).clamp_(0.0, 1.0)
                scale = offset = None
            luma = (x * grey).sum(1, keepdim=True).expand_as(x)
            x = luma.contiguous() if t.grayscale >= 1.0 else torch.where(per_image(params.grayscale), luma, x)
        mean, std = t.mean.to(x.device).view(1, 3, 1, 1), t.std.to(x.device).view(1, 3, 1, 1)
        x = x.mul_(1 / std if scale is None else scale / std).add_((-mean if offset is None else offset - mean) / std)
        if scale is not None:
            torch.minimum(torch.maximum(x, -mean / std, out=x), (1 - mean) / std, out=x)
        return x

    def _geometry(self, x: torch.Tensor, params: BatchParams, mode: str, gain: float | torch.Tensor,
                  is_mask: bool = False, ceiling: torch.Tensor | None = None) -> torch.Tensor:
        """Crop + resize + flip as two batched matmuls, columns then rows, so that neither needs a transposed copy
        (times `gain`, a scalar or one per draw, which folds in uint8 -> [0,1] and a folded brightness), then rotation
        for the draws that have an angle. x: [N,C,H,W] of any dtype -> contiguous float32 [N,C,S,S]. Images (not
        `is_mask`) are clamped to [0, ceiling of the draw (default 1)] before rotating, as the per-sample resize
        clamps; the caller thresholds masks."""
        n, c, height, width = x.shape
        s = self.t.image_size
        rows, cols = self._matrices(params, height, width, mode, x.device)  # [N,S,H], [N,S,W] (flipped where drawn)
        out = x.float().view(n, c * height, width) @ cols.transpose(1, 2)  # [N,C*H,S]
        out = (rows.unsqueeze(1) * gain) @ out.view(n, c, height, s)  # [N,1,S,H] @ [N,C,H,S] -> [N,C,S,S]
        if not is_mask:
            out = out.clamp_(0.0, 1.0) if ceiling is None else torch.minimum(
                out.clamp_(min=0.0), ceiling.to(out.device).view(-1, 1, 1, 1), out=out)
        # ImageTransform rotates, then flips; flipping first and rotating by -angle is the same map
        angle = torch.where(params.hflip, -params.angle, params.angle)
        turned = (angle != 0).nonzero()[:, 0]
        if len(turned):
            rad = torch.deg2rad(angle[turned].double())
            cos, sin, zero = torch.cos(rad), torch.sin(rad), torch.zeros_like(rad)
            theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
            sub = out[turned.to(out.device)]
            grid = F.affine_grid(theta.to(out), list(sub.shape), align_corners=False)
            rotated = F.grid_sample(sub, grid, mode="nearest" if is_mask else "bilinear", padding_mode="zeros",
                                    align_corners=False)
            out = out.index_copy(0, turned.to(out.device), rotated)
        return out

    def _matrices(self, params: BatchParams, height: int, width: int, mode: str,
                  device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Each draw's resampling matrices: rows [N,S,H] maps input rows top..top+h-1 onto S output rows, cols
        [N,S,W] likewise for the columns, in reverse output order where the draw flips. One gather for both when the
        image is square (staged images are): on a CPU these small ops cost about as much as the matmuls."""
        crop, flip = params.crop.to(device), params.hflip.to(device).long()
        if height != width:
            return (self._place(crop[:, 0], crop[:, 2], torch.zeros_like(flip), height, mode, device),
                    self._place(crop[:, 1], crop[:, 3], flip, width, mode, device))
        both = self._place(torch.cat([crop[:, 0], crop[:, 1]]), torch.cat([crop[:, 2], crop[:, 3]]),
                           torch.cat([torch.zeros_like(flip), flip]), height, mode, device)
        return both[: len(flip)], both[len(flip) :]

    def _place(self, start: torch.Tensor, length: torch.Tensor, flip: torch.Tensor, n_in: int, mode: str,
               device: torch.device) -> torch.Tensor:
        """[N, S, n_in] resampling matrices: draw i maps input[start_i : start_i + length_i] onto S outputs, in
        reverse output order where flip_i is 1."""
        bank = self._bank(n_in, mode, device)  # [2 (flip), n_in + 1 (L), S, 1 + n_in]; column 0 is zero
        slabs = bank.view(-1, *bank.shape[2:]).index_select(0, flip * (n_in + 1) + length)  # [N, S, 1 + n_in]
        column = (torch.arange(1, n_in + 1, device=device) - start.view(-1, 1)).clamp_(min=0)  # outside: column 0
        return slabs.gather(2, column.unsqueeze(1).expand(-1, self.t.image_size, -1))

    def _bank(self, n_in: int, mode: str, device: torch.device) -> torch.Tensor:
        """For every crop length L <= n_in, F.interpolate's antialiased 1-d weights L -> S (the per-sample path's
        kernel) in columns 1..L, zeros in column 0 and after L (what `_place` reads outside the crop); unflipped and
        flipped. Built once per (n_in, mode, device): 2 (n_in + 1)² S floats, 4 MB at 64 px, 91 MB at 224 px."""
        key = (n_in, mode, str(device))
        if key not in self._banks:
            s = self.t.image_size
            bank = torch.zeros(n_in + 1, s, n_in + 1)
            for length in range(1, n_in + 1):
                if length == s:
                    bank[length, :, 1 : length + 1] = torch.eye(s)
                    continue
                # interpolate each basis vector along one axis, the other axis kept at size 2 (torch's antialiased
                # kernels treat a size-1 axis differently)
                basis = torch.eye(length).view(length, 1, length, 1).expand(length, 1, length, 2).contiguous()
                weights = F.interpolate(basis, size=(s, 2), mode=mode, align_corners=False, antialias=True)
                bank[length, :, 1 : length + 1] = weights[:, 0, :, 0].t()
            self._banks[key] = torch.stack([bank, bank.flip(1)]).to(device)
        return self._banks[key]


def stage_for(transform: ImageTransform, stage_size: int | None = None) -> StagedTransform:
    """The staging transform that pairs with `BatchAugment(transform)`: the model's geometry at `stage_size`
    (default: the model's input size, so random crops are only ever upsampled)."""
    return StagedTransform(stage_size or transform.image_size, transform.interpolation, transform.resize_mode)

