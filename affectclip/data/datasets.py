"""`ManifestDataset`: manifest records -> ARCHITECTURE.md sample dicts; `collate`: samples -> batch dict.

A sample that cannot be decoded (missing file, corrupt or truncated image/video, mask of the wrong size) comes back
as `{"error", "index", "path"}` instead of a silently substituted neighbour: substitution hides data problems and
changes evaluation sets. `collate` moves such samples to `batch["errors"]` for the trainer/evaluator to count.
Label problems (a class name not in `classes`) and rows whose files lie outside the manifest's folder (unless the
manifest was read with `allow_outside=True`) are raised when the dataset is built, before any run starts.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from affectclip.data.manifest import Manifest, path_kind, read_manifest

# What a broken file raises from the image decoder (`ImageDecodeError`, a ValueError), PyAV/OpenCV or the
# transforms; anything else is a bug and propagates.
DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, RuntimeError)


def label_index(label: Any, classes: Sequence[str] | None, row: int) -> int:
    if label is None:
        return -1
    if isinstance(label, int):
        if classes is not None and not 0 <= label < len(classes):
            raise ValueError(f"manifest row {row}: label index {label} is outside [0, {len(classes)}) "
                             f"for classes {list(classes)}")
        return label
    if classes is None or label not in classes:
        raise ValueError(f"manifest row {row}: label {label!r} is not one of the classes {list(classes or [])}; "
                         "fix the row or pass classes=[...] that include it")
    return classes.index(label)


def load_image_sample(source: Any, mask_source: Any = None, transform=None, what: str | None = None,
                      ) -> dict[str, torch.Tensor]:
    """Decode an image (path or binary file object) and optional subject mask into {"image"[, "mask"]} tensors.

    Decoding goes through `core.images` (size checked from the header first, 16-bit and float images scaled by
    their range); any failure is an `ImageDecodeError` naming `what` (default: the path)."""
    from affectclip.core.images import decode_grey, decode_rgb
    from affectclip.data.transforms import image_to_tensor, mask_to_tensor

    image = decode_rgb(source, what)
    mask = None
    if mask_source is not None:
        mask = decode_grey(mask_source, f"{what} (mask)" if what else None)
    if transform is None:
        out = {"image": image_to_tensor(image)}
        if mask is not None:
            if mask.shape != image.shape[:2]:
                raise ValueError(f"mask size {mask.shape} differs from image size {image.shape[:2]}")
            out["mask"] = mask_to_tensor(mask)[0]
        return out
    if mask is None:
        return {"image": transform(image)}
    image_t, mask_t = transform(image, mask)
    return {"image": image_t, "mask": mask_t}


def record_fields(rec: dict[str, Any], label: int, index: int, target_names: Sequence[str]) -> dict[str, Any]:
    """The non-pixel part of a sample dict, from a manifest record (shared by manifest and shard datasets)."""
    out: dict[str, Any] = {"label": label, "index": index, "id": rec.get("id", str(rec.get("_row", index + 1)))}
    if "caption" in rec:
        out["caption"] = rec["caption"]
    soft = rec.get("soft_label", rec.get("votes"))
    if soft is not None:
        s = torch.tensor(soft, dtype=torch.float32)
        out["soft_label"] = s / s.sum() if s.sum() > 0 else s
    if "sentiment" in rec:
        out["sentiment"] = torch.tensor(rec["sentiment"], dtype=torch.float32)
    if target_names and "targets" in rec:
        out["targets"] = torch.tensor([rec["targets"].get(k, float("nan")) for k in target_names],
                                      dtype=torch.float32)
    return out


class ManifestDataset(torch.utils.data.Dataset):
    """Images, videos and frame folders listed in a manifest, as sample dicts.

    classes: class names in index order. None = the sorted distinct string labels of the manifest (integer
      labels are then used as given). The order matters for evaluation: pass the benchmark's native order.
    kind: "auto" (from each path: image extension, video extension or folder), "image" or "video".
    transform: an `ImageTransform` (clips go through its `transform_clip`, one augmentation draw per clip);
      None = float [0, 1] tensors at native size.
    video_sampler: an object with `indices(n_frames, fps, rng)` (see data/video.py); default 16 uniform frames.
    seed: randomness of random samplers, drawn per (seed, epoch, index) so any sample is reproducible;
      call `set_epoch` to vary it across epochs.
    read_masks: decode the rows' subject masks; False for a model without a subject token saves a second image
      decode and transform per sample.
    allow_outside: when `manifest` is a path, read it allowing files outside its folder (a `Manifest` object
      carries its own setting from `read_manifest(..., allow_outside=)`).
    """

    def __init__(self, manifest: Manifest | str | Path, transform=None, classes: Sequence[str] | None = None,
                 kind: str = "auto", video_sampler=None, seed: int = 0, read_masks: bool = True,
                 allow_outside: bool = False):
        if kind not in ("auto", "image", "video"):
            raise ValueError(f"kind must be 'auto', 'image' or 'video', got {kind!r}")
        self.manifest = manifest if isinstance(manifest, Manifest) else read_manifest(
            manifest, check_files=False, allow_outside=allow_outside)
        self._check_confined()
        if classes is None:
            names = {r["label"] for r in self.manifest.records if isinstance(r.get("label"), str)}
            classes = sorted(names) if names else None
        self.classes = list(classes) if classes is not None else None
        self.labels = [label_index(r.get("label"), self.classes, r.get("_row", i + 1))
                       for i, r in enumerate(self.manifest.records)]
        self.target_names = list(dict.fromkeys(k for r in self.manifest.records for k in r.get("targets", {})))
        n_classes = len(self.classes) if self.classes is not None else None
        for i, r in enumerate(self.manifest.records):
            soft = r.get("soft_label", r.get("votes"))
            if soft is not None and n_classes is not None and len(soft) != n_classes:
                field = "soft_label" if "soft_label" in r else "votes"
                raise ValueError(f"manifest row {r.get('_row', i + 1)}: {field} has {len(soft)} values for "
                                 f"{n_classes} classes {self.classes}")
        self.transform, self.kind, self.seed, self.epoch = transform, kind, seed, 0
        self.video_sampler, self.read_masks = video_sampler, read_masks

    def _check_confined(self) -> None:
        """Refuse, before any run starts, a manifest whose rows lead outside its folder (a ManifestError naming the
        first such row and field, and how many there are) unless it was read with `allow_outside=True`."""
        if self.manifest.allow_outside:
            return
        from affectclip.data.manifest import ManifestError

        bad: list[ManifestError] = []
        for i, rec in enumerate(self.manifest.records):
            for field in ("path", "mask"):
                if field in rec:
                    try:
                        self.manifest.resolve(rec[field], rec.get("_row", i + 1), field)
                    except ManifestError as exc:
                        bad.append(exc)
        if bad:
            more = f" ({len(bad)} such paths in all)" if len(bad) > 1 else ""
            raise ManifestError(bad[0].message + more, bad[0].row, bad[0].field, bad[0].source)

    def __len__(self) -> int:
        return len(self.manifest)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _kind(self, path: Path) -> str:
        if self.kind == "image":
            return "image"
        found = path_kind(path)
        if self.kind == "video":
            return "video"
        if found == "unknown":
            raise ValueError(f"{path}: cannot tell image from video by its extension; pass kind='image' or 'video'")
        return "image" if found == "image" else "video"

    def _video(self, path: Path, rec: dict[str, Any], index: int) -> dict[str, torch.Tensor]:
        import math

        from affectclip.data import video as V
        from affectclip.data.transforms import image_to_tensor

        sampler = self.video_sampler or V.UniformSampler(16)
        info = V.probe(path)
        start, end = rec.get("start"), rec.get("end")
        n = info.n_frames
        if start is not None or end is not None:
            if info.fps <= 0:
                raise V.VideoError(f"{path}: frame rate unknown, cannot cut the start/end segment")
            first = math.ceil((start or 0.0) * info.fps)
            last = min(n - 1, math.floor(end * info.fps)) if end is not None else n - 1
            n = last - first + 1
        rng = np.random.default_rng([self.seed, self.epoch, index])
        frames = V.read_frames(path, sampler.indices(n, info.fps, rng), start=start, end=end)
        if self.transform is None:
            clip = torch.stack([image_to_tensor(f) for f in frames])
        else:
            clip = self.transform.transform_clip(frames)
        return {"video": clip, "padding_mask": torch.zeros(len(clip), dtype=torch.bool)}

    def sample_fields(self, index: int) -> dict[str, Any]:
        """The non-pixel part of sample `index` (label, caption, ids, targets) without decoding its file."""
        return record_fields(self.manifest.records[index], self.labels[index], index, self.target_names)

    def __getitem__(self, index: int) -> dict[str, Any]:
        rec = self.manifest.records[index]
        row = rec.get("_row", index + 1)
        path = rec["path"]
        try:
            path = self.manifest.resolve(rec["path"], row)  # re-checked here: a symlink may change after building
            if not path.exists():
                raise FileNotFoundError(f"file not found: {path}")
            if self._kind(path) == "image":
                mask = self.manifest.resolve(rec["mask"], row, "mask") if self.read_masks and "mask" in rec else None
                sample = load_image_sample(path, mask, self.transform)
            else:
                sample = self._video(path, rec, index)
        except DECODE_ERRORS as exc:
            return {"error": f"{type(exc).__name__}: {exc}", "index": index, "path": str(path)}
        sample.update(self.sample_fields(index))
        return sample


def _pad_videos(videos: list[torch.Tensor], masks: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-pad clips to the longest one; padded frames are True in the padding mask."""
    T = max(v.shape[0] for v in videos)
    out_v = videos[0].new_zeros((len(videos), T, *videos[0].shape[1:]))
    out_m = torch.ones((len(videos), T), dtype=torch.bool)
    for i, (v, m) in enumerate(zip(videos, masks, strict=True)):
        out_v[i, : v.shape[0]] = v
        out_m[i, : v.shape[0]] = m
    return out_v, out_m


def collate(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack sample dicts into a batch.

    Tensors present in every sample are stacked (clips of different lengths are zero-padded, with `padding_mask`);
    `label`/`index` become int64 tensors; captions, ids and any key missing from some samples stay lists (None where
    missing). Error samples are removed and listed in `batch["errors"]` (always present, possibly empty); a batch of
    only errors is `{"errors": [...]}`.
    """
    errors = [s for s in samples if "error" in s]
    good = [s for s in samples if "error" not in s]
    batch: dict[str, Any] = {"errors": errors}
    if not good:
        return batch
    keys = list(dict.fromkeys(k for s in good for k in s))
    if "video" in keys and all("video" in s for s in good):
        masks = [s.get("padding_mask", torch.zeros(s["video"].shape[0], dtype=torch.bool)) for s in good]
        batch["video"], batch["padding_mask"] = _pad_videos([s["video"] for s in good], masks)
    for key in keys:
        if key in batch:
            continue
        values = [s.get(key) for s in good]
        if key in ("label", "index") and all(isinstance(v, int) for v in values):
            batch[key] = torch.tensor(values, dtype=torch.long)
        elif all(isinstance(v, torch.Tensor) for v in values):
            shapes = {tuple(v.shape) for v in values}
            if len(shapes) > 1:
                raise ValueError(f"cannot batch {key!r}: samples have shapes {sorted(shapes)}; use a transform with "
                                 "a fixed image_size (and the same number of values per row)")
            batch[key] = torch.stack(values)
        else:
            batch[key] = values
    return batch
