"""Deterministic synthetic faces drawn from facial action units, with structured captions.

Why: no face-caption data exists offline (methods.md §4.6.8), yet every path of the library — training, local
(region ↔ sentence) alignment, mining, video heads, evaluation — needs data whose captions, regions and labels
are *known to be right*. Each image is rendered from action-unit (AU) intensities: a class prototype
(EMFACS-like) scaled by a per-sample intensity and jittered, plus nuisance variation (head position, scale,
rotation, skin tone, background, sensor noise) so the task is learnable but not trivial.

All randomness comes from `np.random.Generator`s seeded from `(seed, split, index)`, so a sample is a pure
function of its seed. Captions, region boxes and the subject mask are derived from the drawn geometry.
Captions are label-derived: a "zero-shot" number on this data is evidence of mechanics only.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np

CLASSES: tuple[str, ...] = (
    "neutral", "happiness", "sadness", "surprise", "fear", "disgust", "anger", "contempt",
)
REGIONS: tuple[str, ...] = ("brows", "eyes", "cheeks", "nose", "mouth")

# AU -> (region, behaviour phrase, FACS name). FACS names from methods.md §4.6.8.
ACTION_UNITS: dict[str, tuple[str, str, str]] = {
    "AU1": ("brows", "the inner corners of the brows are raised", "inner brow raiser"),
    "AU2": ("brows", "the outer brows are raised", "outer brow raiser"),
    "AU4": ("brows", "the brows are lowered and drawn together", "brow lowerer"),
    "AU5": ("eyes", "the upper eyelids are raised to widen the eyes", "upper lid raiser"),
    "AU7": ("eyes", "the eyelids are tightened", "lid tightener"),
    "AU6": ("cheeks", "the cheeks are raised", "cheek raiser"),
    "AU9": ("nose", "the nose is wrinkled", "nose wrinkler"),
    "AU12": ("mouth", "the lip corners are pulled up", "lip corner puller"),
    "AU14": ("mouth", "one lip corner is tightened into a dimple", "dimpler"),
    "AU15": ("mouth", "the lip corners are pulled down", "lip corner depressor"),
    "AU16": ("mouth", "the lower lip is pushed down", "lower lip depressor"),
    "AU20": ("mouth", "the lips are stretched sideways", "lip stretcher"),
    "AU23": ("mouth", "the lips are tightened", "lip tightener"),
    "AU26": ("mouth", "the jaw drops and the mouth opens", "jaw drop"),
}
AU_NAMES: tuple[str, ...] = tuple(ACTION_UNITS)

# EMFACS-like prototypes (methods.md §4.6.8); contempt's AU12 is unilateral (drawn on one side only).
PROTOTYPES: dict[str, dict[str, float]] = {
    "neutral": {},
    "happiness": {"AU6": 0.9, "AU12": 1.0},
    "sadness": {"AU1": 1.0, "AU4": 0.6, "AU15": 1.0},
    "surprise": {"AU1": 0.9, "AU2": 1.0, "AU5": 1.0, "AU26": 1.0},
    "fear": {"AU1": 1.0, "AU2": 0.7, "AU4": 0.6, "AU5": 0.9, "AU7": 0.5, "AU20": 1.0, "AU26": 0.6},
    "disgust": {"AU9": 1.0, "AU15": 0.7, "AU16": 0.8},
    "anger": {"AU4": 1.0, "AU5": 0.6, "AU7": 0.8, "AU23": 1.0},
    "contempt": {"AU12": 0.9, "AU14": 1.0},
}
ACTIVE_THRESHOLD = 0.2  # an AU at or above this drawn intensity is named in the caption
_NEUTRAL_LOCAL = (
    ("brows", "the brows are relaxed and level"),
    ("mouth", "the mouth is closed and relaxed"),
)


def intensity_word(intensity: float) -> str:
    """Map an expression intensity in [0, 1] to the words used in global captions (thresholds 0.55 / 0.8)."""
    return "mild" if intensity < 0.55 else "moderate" if intensity < 0.8 else "strong"


@dataclass(frozen=True)
class FaceParams:
    """Everything needed to redraw one face: the expression (label, intensity, AU values) and nuisances."""

    label: int
    intensity: float
    aus: tuple[float, ...]  # drawn AU intensities in AU_NAMES order
    cx: float  # face centre, fraction of the image size
    cy: float
    scale: float  # face half-width, fraction of the image size
    angle: float  # head roll in degrees
    skin: tuple[int, int, int]
    background: tuple[int, int, int]
    background2: tuple[int, int, int]
    noise_sigma: float
    noise_seed: int

    def au(self, name: str) -> float:
        return self.aus[AU_NAMES.index(name)]


def sample_params(rng: np.random.Generator, label: int | None = None) -> FaceParams:
    """Draw the expression and nuisance parameters of one face (label drawn uniformly when None)."""
    if label is None:
        label = int(rng.integers(len(CLASSES)))
    if not 0 <= label < len(CLASSES):
        raise ValueError(f"label must be in [0, {len(CLASSES)}), got {label}")
    name = CLASSES[label]
    intensity = 0.0 if name == "neutral" else float(rng.uniform(0.4, 1.0))
    # Inactive AUs get faint noise that stays below the caption threshold, so captions always match pixels.
    aus = rng.uniform(0.0, 0.12, size=len(AU_NAMES))
    for au, weight in PROTOTYPES[name].items():
        aus[AU_NAMES.index(au)] = min(1.0, weight * intensity * rng.uniform(0.85, 1.15))
    aus = np.where(aus >= ACTIVE_THRESHOLD, np.maximum(aus, 0.3), aus)  # keep active AUs clearly visible
    skin_t = rng.uniform()
    skin = np.array([235, 200, 175]) * (1 - skin_t) + np.array([95, 65, 45]) * skin_t
    skin = skin * rng.uniform(0.92, 1.08, size=3)
    bg = rng.integers(0, 256, size=3)
    bg2 = np.clip(bg + rng.integers(-60, 61, size=3), 0, 255)
    return FaceParams(
        label=label, intensity=intensity, aus=tuple(float(a) for a in aus),
        cx=float(rng.uniform(0.44, 0.56)), cy=float(rng.uniform(0.45, 0.55)),
        scale=float(rng.uniform(0.27, 0.33)), angle=float(rng.uniform(-10, 10)),
        skin=tuple(int(c) for c in np.clip(skin, 0, 255)), background=tuple(int(c) for c in bg),
        background2=tuple(int(c) for c in bg2), noise_sigma=float(rng.uniform(2, 8)),
        noise_seed=int(rng.integers(2**31)),
    )


def local_sentences(active_aus: list[str]) -> tuple[list[str], list[str]]:
    """One sentence per region that has an active AU ("<behaviours> (<FACS names>)"), in REGIONS order, and
    the region of each sentence."""
    by_region: dict[str, list[tuple[str, str]]] = {}
    for au in AU_NAMES:
        if au in active_aus:
            region, phrase, facs = ACTION_UNITS[au]
            by_region.setdefault(region, []).append((phrase, facs))
    local, regions = [], []
    for region in REGIONS:
        if region in by_region:
            phrases, facs = zip(*by_region[region], strict=True)
            text = phrases[0] if len(phrases) == 1 else f"{', '.join(phrases[:-1])} and {phrases[-1]}"
            local.append(f"{text} ({', '.join(facs)})")
            regions.append(region)
    return local, regions


def caption_for(params: FaceParams) -> tuple[dict[str, Any], list[str]]:
    """Structured caption of a face (global / one local sentence per active region / summary) and the region of
    each local sentence (ground truth for local alignment)."""
    name = CLASSES[params.label]
    local, local_regions = local_sentences([au for au, v in zip(AU_NAMES, params.aus, strict=True) if v >= ACTIVE_THRESHOLD])
    if name == "neutral":
        for region, sentence in _NEUTRAL_LOCAL:
            local.append(sentence)
            local_regions.append(region)
        caption = {"global": "a neutral expression", "local": local,
                   "summary": "Overall, the face looks calm and neutral"}
    else:
        word = intensity_word(params.intensity)
        caption = {"global": f"a {word} expression of {name}", "local": local,
                   "summary": f"Overall, the face shows {word} {name}"}
    return caption, local_regions


class _Canvas:
    """Maps face coordinates (units of the face half-width, y down, origin at the face centre) to pixels under
    the head's position, scale and roll, and draws with sub-pixel precision."""

    SHIFT = 4

    def __init__(self, params: FaceParams, size: int):
        self.size = size
        self.ox, self.oy = params.cx * size, params.cy * size
        self.s = params.scale * size
        a = math.radians(params.angle)
        self.cos, self.sin = math.cos(a), math.sin(a)
        self.angle = params.angle

    def pts(self, uv: np.ndarray) -> np.ndarray:
        uv = np.asarray(uv, dtype=np.float64).reshape(-1, 2)
        x = self.ox + self.s * (uv[:, 0] * self.cos - uv[:, 1] * self.sin)
        y = self.oy + self.s * (uv[:, 0] * self.sin + uv[:, 1] * self.cos)
        return np.stack([x, y], axis=1)

    def fixed(self, uv: np.ndarray) -> np.ndarray:
        return np.round(self.pts(uv) * (1 << self.SHIFT)).astype(np.int32)

    def ellipse(self, img, center, axes, color, thickness=-1, angle=0.0):
        u, v, k = center[0], center[1], 1 << self.SHIFT
        c = (int(round((self.ox + self.s * (u * self.cos - v * self.sin)) * k)),
             int(round((self.oy + self.s * (u * self.sin + v * self.cos)) * k)))
        ax = (max(1, int(round(axes[0] * self.s * (1 << self.SHIFT)))),
              max(1, int(round(axes[1] * self.s * (1 << self.SHIFT)))))
        cv2.ellipse(img, c, ax, self.angle + angle, 0, 360, color, thickness, cv2.LINE_AA, self.SHIFT)

    def poly(self, img, uv, color, thickness=1, closed=False, fill=False):
        p = self.fixed(uv)
        if fill:
            cv2.fillPoly(img, [p], color, cv2.LINE_AA, self.SHIFT)
        else:
            t = max(1, int(round(thickness * self.s / 20)))
            cv2.polylines(img, [p], closed, color, t, cv2.LINE_AA, self.SHIFT)


def _box(points: np.ndarray, size: int, pad: float = 1.0) -> tuple[int, int, int, int]:
    x0, y0 = np.floor(points.min(axis=0) - pad)
    x1, y1 = np.ceil(points.max(axis=0) + pad)
    return (int(max(0, x0)), int(max(0, y0)), int(min(size, x1)), int(min(size, y1)))


def _ellipse_pts(center, axes, n=16) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([center[0] + axes[0] * np.cos(t), center[1] + axes[1] * np.sin(t)], axis=1)


def render(params: FaceParams, image_size: int = 64, grayscale: bool = False, progress: float = 1.0,
           ) -> tuple[np.ndarray, np.ndarray, dict[str, tuple[int, int, int, int]]]:
    """Draw a face; `progress` in [0, 1] scales every AU (0 = neutral, 1 = apex) for onset sequences.

    Returns (image uint8 [S,S,3], subject mask uint8 [S,S] with 1 = face, region boxes (x0, y0, x1, y1) in pixels).
    """
    S = image_size
    au = {name: v * progress for name, v in zip(AU_NAMES, params.aus, strict=True)}
    cv = _Canvas(params, S)
    # Background: vertical gradient between two colours.
    ramp = np.linspace(0.0, 1.0, S, dtype=np.float32)[:, None, None]
    img = (np.array(params.background, np.float32) * (1 - ramp)
           + np.array(params.background2, np.float32) * ramp)
    img = np.ascontiguousarray(np.broadcast_to(img, (S, S, 3))).astype(np.uint8)
    skin = params.skin
    dark = tuple(int(c * 0.35) for c in skin)
    shade = tuple(int(c * 0.8) for c in skin)
    face_axes = (1.0, 1.3)
    cv.ellipse(img, (0, 0.05), face_axes, skin)
    mask = np.zeros((S, S), np.uint8)
    cv.ellipse(mask, (0, 0.05), face_axes, 1)
    regions: dict[str, np.ndarray] = {}

    # Brows: inner / middle / outer points per side; AU1 raises inner, AU2 outer, AU4 lowers and gathers.
    brow_pts = []
    for side in (-1, 1):
        inner = (side * (0.14 + 0.02 - 0.06 * au["AU4"]), -0.48 - 0.2 * au["AU1"] + 0.16 * au["AU4"])
        mid = (side * 0.36, -0.56 - 0.1 * au["AU1"] - 0.14 * au["AU2"] + 0.08 * au["AU4"])
        outer = (side * 0.6, -0.5 - 0.22 * au["AU2"] + 0.04 * au["AU4"])
        p = np.array([inner, mid, outer])
        cv.poly(img, p, dark, thickness=2.2)
        brow_pts.append(p)
    if au["AU4"] >= ACTIVE_THRESHOLD:  # vertical furrows between the brows
        g = tuple(int(c * (1 - 0.45 * au["AU4"])) for c in skin)
        for x in (-0.05, 0.05):
            cv.poly(img, np.array([(x, -0.5), (x, -0.32)]), g, thickness=0.8)
    regions["brows"] = cv.pts(np.concatenate(brow_pts))

    # Eyes: opening grows with AU5, shrinks with AU7 and with the cheek push of AU6.
    eye_h = 0.085 * (1 + 0.9 * au["AU5"] - 0.55 * au["AU7"] - 0.45 * au["AU6"])
    eye_pts = []
    for side in (-1, 1):
        c = (side * 0.36, -0.25)
        cv.ellipse(img, c, (0.17, eye_h), (245, 245, 245))
        cv.ellipse(img, c, (min(0.075, eye_h), min(0.075, eye_h)), (40, 30, 25))
        cv.ellipse(img, c, (0.17, eye_h), dark, thickness=max(1, S // 48))
        eye_pts.append(_ellipse_pts(c, (0.17, max(eye_h, 0.03))))
    regions["eyes"] = cv.pts(np.concatenate(eye_pts))

    # Cheeks: AU6 raises a flushed bulge under each eye.
    cheek_pts = []
    for side in (-1, 1):
        c = (side * 0.5, 0.12 - 0.12 * au["AU6"])
        if au["AU6"] >= ACTIVE_THRESHOLD:
            flush = tuple(int(min(255, c_ * (1 + 0.25 * au["AU6"] * w))) for c_, w in zip(skin, (1.0, -0.6, -0.6), strict=True))
            cv.ellipse(img, c, (0.2, 0.13), flush)
            cv.ellipse(img, c, (0.2, 0.13), shade, thickness=1, angle=0)
        cheek_pts.append(_ellipse_pts(c, (0.2, 0.13)))
    regions["cheeks"] = cv.pts(np.concatenate(cheek_pts))

    # Nose: bridge and nostrils; AU9 adds wrinkles across the bridge and lifts the nostrils.
    lift = 0.06 * au["AU9"]
    nose = np.array([(0.0, -0.22), (0.02, 0.08 - lift), (-0.1, 0.2 - lift), (0.1, 0.2 - lift)])
    cv.poly(img, nose[:2], shade, thickness=1.2)
    cv.poly(img, np.array([(-0.13, 0.17 - lift), (0.0, 0.24 - lift), (0.13, 0.17 - lift)]), shade, thickness=1.5)
    if au["AU9"] >= ACTIVE_THRESHOLD:
        w = tuple(int(c * (1 - 0.5 * au["AU9"])) for c in skin)
        for y in (-0.14, -0.06, 0.02):
            cv.poly(img, np.array([(-0.12, y + 0.02), (0.0, y), (0.12, y + 0.02)]), w, thickness=1.0)
    regions["nose"] = cv.pts(np.concatenate([nose, [(-0.14, -0.16), (0.14, 0.26)]]))

    # Mouth: corners up (AU12) / down (AU15), one side only for contempt (AU14), wider (AU20) or narrower (AU23),
    # open (AU26, AU16 lowers the lower lip).
    half_w = 0.3 * (1 + 0.45 * au["AU20"] + 0.12 * au["AU12"] - 0.3 * au["AU23"])
    up = 0.16 * au["AU12"] - 0.16 * au["AU15"]
    left_up, right_up = up, up + 0.16 * au["AU14"]
    if au["AU14"] >= ACTIVE_THRESHOLD:  # unilateral smile: only the right corner keeps the pull
        left_up = -0.02 * au["AU14"]
    open_up = 0.03 + 0.12 * au["AU26"]
    open_low = 0.03 + 0.28 * au["AU26"] + 0.14 * au["AU16"] + 0.05 * au["AU20"]
    open_up *= 1 - 0.6 * au["AU23"]
    open_low *= 1 - 0.6 * au["AU23"]
    t = np.linspace(-1, 1, 13)
    corner = np.where(t < 0, left_up, right_up) * t**2
    cy = 0.62
    upper = np.stack([t * half_w, cy - corner - open_up * (1 - t**2)], axis=1)
    lower = np.stack([t * half_w, cy - corner + open_low * (1 - t**2)], axis=1)
    outline = np.concatenate([upper, lower[::-1]])
    lip = tuple(int(min(255, c * f)) for c, f in zip(skin, (0.85, 0.5, 0.5), strict=True))
    cv.poly(img, outline, (60, 20, 25) if au["AU26"] + au["AU16"] >= ACTIVE_THRESHOLD else lip, fill=True)
    cv.poly(img, outline, lip, thickness=1.8 * (1 - 0.5 * au["AU23"]), closed=True)
    if au["AU14"] >= ACTIVE_THRESHOLD:
        cv.ellipse(img, (half_w + 0.06, cy - right_up - 0.02), (0.03, 0.03), dark)
    regions["mouth"] = cv.pts(np.concatenate([outline, [(half_w + 0.1, cy - right_up - 0.05)]]))

    if params.noise_sigma > 0:
        noise = np.random.default_rng(params.noise_seed).standard_normal(img.shape, dtype=np.float32)
        img = np.clip(noise * params.noise_sigma + img, 0, 255).astype(np.uint8)
    if grayscale:
        img = np.repeat(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)[:, :, None], 3, axis=2)
    boxes = {name: _box(regions[name], S) for name in REGIONS}
    return img, mask, boxes


def make_face(rng: np.random.Generator | int, label: int | None = None, image_size: int = 64,
              grayscale: bool = False) -> dict[str, Any]:
    """One synthetic face: image, mask, label, label_name, intensity, caption, regions, local_regions, params."""
    rng = np.random.default_rng(rng) if not isinstance(rng, np.random.Generator) else rng
    params = sample_params(rng, label)
    image, mask, boxes = render(params, image_size, grayscale)
    caption, local_regions = caption_for(params)
    return {"image": image, "mask": mask, "label": params.label, "label_name": CLASSES[params.label],
            "intensity": params.intensity, "caption": caption, "regions": boxes,
            "local_regions": local_regions, "params": params}


def onset_sequence(params: FaceParams, num_frames: int, image_size: int = 64, grayscale: bool = False,
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Frames from neutral to the apex (smoothstep ramp, same head and noise pattern per frame); the captions of
    the apex (`caption_for(params)`) describe the whole clip. Returns (frames uint8 [T,S,S,3], masks [T,S,S])."""
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    frames, masks = [], []
    for k in range(num_frames):
        x = 1.0 if num_frames == 1 else k / (num_frames - 1)
        frame_params = replace(params, noise_seed=params.noise_seed + k)
        img, mask, _ = render(frame_params, image_size, grayscale, progress=x * x * (3 - 2 * x))
        frames.append(img)
        masks.append(mask)
    return np.stack(frames), np.stack(masks)


_SPLIT_IDS = {"train": 0, "val": 1, "valid": 1, "test": 2}


def _sample_seed(seed: int, split: str, index: int) -> list[int]:
    if split not in _SPLIT_IDS:
        raise ValueError(f"split must be one of {sorted(_SPLIT_IDS)}, got {split!r}")
    return [seed, _SPLIT_IDS[split], index]


class SyntheticFaceDataset:
    """Map-style dataset of synthetic faces returning ARCHITECTURE.md sample dicts.

    Labels are balanced (index mod number of classes); everything else is drawn from a generator seeded by
    (seed, split, index), so splits are disjoint draws and any sample can be regenerated alone. With
    `video_frames > 0` each sample is an onset clip under `video` [T,3,S,S] with a `padding_mask` [T] (all False).
    Extra keys for tests/diagnostics: `regions` (boxes in pixels of the untransformed image) and `local_regions`.
    Without a transform images are float tensors in [0, 1] (no normalisation).
    """

    def __init__(self, n: int, split: str = "train", seed: int = 0, image_size: int = 64, transform=None,
                 video_frames: int = 0, grayscale: bool = False):
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        _sample_seed(seed, split, 0)
        self.n, self.split, self.seed = n, split, seed
        self.image_size, self.transform = image_size, transform
        self.video_frames, self.grayscale = video_frames, grayscale
        self.classes = CLASSES

    def __len__(self) -> int:
        return self.n

    def face(self, index: int) -> dict[str, Any]:
        """The raw face record (numpy image, params, captions) behind sample `index`."""
        if not 0 <= index < self.n:
            raise IndexError(f"index {index} out of range for {self.n} samples")
        rng = np.random.default_rng(_sample_seed(self.seed, self.split, index))
        return make_face(rng, index % len(CLASSES), self.image_size, self.grayscale)

    def _to_tensors(self, image: np.ndarray, mask: np.ndarray):
        import torch

        if self.transform is None:
            return (torch.from_numpy(image).permute(2, 0, 1).float().div_(255.0),
                    torch.from_numpy(mask.astype(np.float32)))
        return self.transform(image, mask)

    def __getitem__(self, index: int) -> dict[str, Any]:
        import torch

        face = self.face(index)
        sample: dict[str, Any] = {
            "caption": face["caption"], "label": face["label"], "index": index,
            "id": f"synthetic-{self.split}-{index:06d}", "regions": face["regions"],
            "local_regions": face["local_regions"],
        }
        if self.video_frames > 0:
            frames, masks = onset_sequence(face["params"], self.video_frames, self.image_size, self.grayscale)
            if self.transform is not None:  # one augmentation draw for the whole clip
                sample["video"], sample["mask"] = self.transform.transform_clip(frames, masks=masks)
            else:
                sample["video"] = torch.from_numpy(frames).permute(0, 3, 1, 2).float().div_(255.0)
                sample["mask"] = torch.from_numpy(masks.astype(np.float32))
            sample["padding_mask"] = torch.zeros(self.video_frames, dtype=torch.bool)
        else:
            sample["image"], sample["mask"] = self._to_tensors(face["image"], face["mask"])
        return sample


def write_synthetic_dataset(out_dir: str | Path, n_train: int, n_test: int, seed: int = 0,
                            image_size: int = 64, grayscale: bool = False) -> Path:
    """Write PNGs under out_dir/{train,test}/ (plus subject masks under masks/) and out_dir/manifest.jsonl with
    structured captions, labels, splits and region boxes; returns the manifest path."""
    out = Path(out_dir)
    rows = []
    for split, n in (("train", n_train), ("test", n_test)):
        ds = SyntheticFaceDataset(n, split, seed, image_size, grayscale=grayscale)
        (out / split).mkdir(parents=True, exist_ok=True)
        (out / "masks" / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            face = ds.face(i)
            rel = f"{split}/{i:06d}.png"
            mask_rel = f"masks/{split}/{i:06d}.png"
            cv2.imwrite(str(out / rel), cv2.cvtColor(face["image"], cv2.COLOR_RGB2BGR))
            cv2.imwrite(str(out / mask_rel), face["mask"] * 255)
            rows.append({"id": f"synthetic-{split}-{i:06d}", "path": rel, "caption": face["caption"],
                         "label": face["label_name"], "split": split, "mask": mask_rel,
                         "meta": {"regions": {r: list(b) for r, b in face["regions"].items()},
                                  "local_regions": face["local_regions"], "intensity": face["intensity"],
                                  "synthetic_captions": True}})
    from affectclip.core.io import atomic_write_text

    return atomic_write_text(out / "manifest.jsonl", "".join(json.dumps(row) + "\n" for row in rows))
