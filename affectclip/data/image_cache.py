"""Decode each training image once per run: a memory store of staged uint8 images (batch augmentation).

With per-sample augmentation every epoch decodes every file again; for small face crops (FER+ is 48 px) the PNG
decode costs more than the augmentation and, on a CPU, a fifth of a tiny model's step. Batch augmentation stages
images deterministically (data/batch_augment.py), so the staged pixels can be kept: `StagedImageCache` wraps a
manifest dataset and fills one preallocated uint8 tensor [N,3,s,s] (+ masks [N,s,s]) as samples are first read.
With DataLoader workers the store lives in shared memory, so what one worker decodes every worker reuses.

Unreadable samples are never stored: they are read (and reported) again each time they are drawn, as without the
cache. Clips are not cached (their frame windows are drawn per epoch).
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch.utils.data import Dataset

MAX_RAM_FRACTION = 0.5  # refuse a store larger than this share of the machine's memory


def physical_memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


class StagedImageCache(Dataset):
    """`dataset[i]` with its staged image (and subject mask) served from memory after the first read.

    dataset: map-style, returning staged uint8 images (a `ManifestDataset` built with a `StagedTransform`) and
      offering `sample_fields(i)` (labels, captions, ... without decoding).
    shared: put the store in shared memory (needed with DataLoader workers: each worker is a separate process).
    """

    def __init__(self, dataset: Any, stage_size: int, masks: bool = False, shared: bool = False) -> None:
        n, s = len(dataset), int(stage_size)
        need = n * 3 * s * s + (n * s * s if masks else 0)
        total = physical_memory_bytes()
        if total is not None and need > MAX_RAM_FRACTION * total:
            raise MemoryError(f"data.cache_images would hold {need / 2**30:.1f} GiB of staged images ({n} x 3 x {s} x "
                              f"{s}), more than half of this machine's {total / 2**30:.1f} GiB; lower data.stage_size "
                              "or set data.cache_images=false")
        self.dataset, self.stage_size = dataset, s
        self.images = torch.zeros(n, 3, s, s, dtype=torch.uint8)
        self.masks = torch.zeros(n, s, s, dtype=torch.uint8) if masks else None
        self.filled = torch.zeros(n, dtype=torch.bool)
        if shared:
            for t in (self.images, self.masks, self.filled):
                if t is not None:
                    t.share_memory_()
        self.nbytes = need

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name: str) -> Any:  # labels, classes, set_epoch, ... of the wrapped dataset
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)

    @property
    def n_cached(self) -> int:
        return int(self.filled.sum())

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: list[int]) -> list[dict[str, Any]]:
        """A batch (the DataLoader calls this instead of `__getitem__` per index): the stored images are read with
        one indexing op (a copy, never a view of the store), since 32 per-sample reads cost a tenth of a tiny
        model's step; the others are read and stored one by one."""
        index = torch.as_tensor(indices, dtype=torch.long)
        stored = self.filled[index]
        hits = index[stored]
        images = self.images[hits]
        masks = self.masks[hits] if self.masks is not None else None
        out, j = [], 0
        for i, hit in zip(indices, stored.tolist(), strict=True):
            if not hit:
                out.append(self._read_and_store(i))
                continue
            sample = self.dataset.sample_fields(i)
            sample["image"] = images[j]
            if masks is not None:
                sample["mask"] = masks[j]
            out.append(sample)
            j += 1
        return out

    def _read_and_store(self, index: int) -> dict[str, Any]:
        sample = self.dataset[index]
        image = sample.get("image")
        if image is None:  # an unreadable sample (reported by the loop) or a clip: nothing to keep
            return sample
        if image.dtype != torch.uint8 or tuple(image.shape) != (3, self.stage_size, self.stage_size):
            raise ValueError(f"StagedImageCache stores staged uint8 [3,{self.stage_size},{self.stage_size}] images; "
                             f"sample {index} is {image.dtype} {tuple(image.shape)} (build the dataset with "
                             "StagedTransform)")
        self.images[index] = image
        if self.masks is not None:
            if "mask" not in sample:
                raise ValueError(f"sample {index} has no subject mask, but this model reads masks")
            self.masks[index] = sample["mask"]
        self.filled[index] = True  # set last: a concurrent reader sees either no entry or a complete one
        return sample
