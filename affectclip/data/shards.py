"""Tar shards in WebDataset layout: `write_shards` packs a manifest, `ShardDataset` streams it back.

Why: millions of small files are slow on network filesystems and object stores; sequential tar reads are not.
Layout per sample (consecutive members sharing a key): `KEY.png|jpg|...` (the original bytes, never re-encoded),
optional `KEY.mask.png`, and `KEY.json` (the manifest record without its path, plus `source_path`). An
`index.json` next to the shards lists them with their sample counts and the target names, so readers agree on the
order of `targets` values without scanning the data.
"""

from __future__ import annotations

import io
import json
import re
import tarfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from affectclip.data.datasets import DECODE_ERRORS, label_index, load_image_sample, record_fields
from affectclip.data.manifest import Manifest, path_kind

INDEX_FILE = "index.json"
_KEY_RE = re.compile(r"[^A-Za-z0-9_-]+")


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def write_shards(manifest: Manifest, out_dir: str | Path, max_size: int = 256 * 2**20, max_count: int = 1000,
                 ) -> list[Path]:
    """Pack the image rows of a manifest into out_dir/shard-NNNNNN.tar; a shard closes before it would pass
    `max_size` bytes or `max_count` samples. Video rows and missing files are errors naming the row."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    shards: list[Path] = []
    counts: list[int] = []
    tar, size = None, 0
    seen: set[str] = set()
    try:
        for i, rec in enumerate(manifest.records):
            row = rec.get("_row", i + 1)
            src = manifest.resolve(rec["path"])
            if not src.is_file() or path_kind(src) != "image":
                raise ValueError(f"manifest row {row}: {src} is not an image file; shards hold image rows only")
            members = {f".{src.suffix.lower().lstrip('.')}": src.read_bytes()}
            if "mask" in rec:
                mask = manifest.resolve(rec["mask"])
                if not mask.is_file():
                    raise ValueError(f"manifest row {row}: mask file not found: {mask}")
                members[".mask.png"] = mask.read_bytes()
            meta = {k: v for k, v in rec.items() if k not in ("path", "mask") and not k.startswith("_")}
            meta["source_path"], meta["index"] = rec["path"], i
            members[".json"] = json.dumps(meta, ensure_ascii=False).encode()
            key = _KEY_RE.sub("_", str(rec.get("id", f"{i:09d}")))
            if key in seen:
                key = f"{key}_{i}"
            seen.add(key)
            need = sum(len(d) + 1024 for d in members.values())
            if tar is None or counts[-1] >= max_count or (counts[-1] and size + need > max_size):
                if tar is not None:
                    tar.close()
                shards.append(out / f"shard-{len(shards):06d}.tar")
                tar, size = tarfile.open(shards[-1], "w"), 0
                counts.append(0)
            for suffix, data in members.items():
                _add(tar, key + suffix, data)
            size += need
            counts[-1] += 1
    finally:
        if tar is not None:
            tar.close()
    target_names = list(dict.fromkeys(k for r in manifest.records for k in r.get("targets", {})))
    index = {"shards": [{"name": p.name, "count": c} for p, c in zip(shards, counts, strict=True)],
             "count": sum(counts), "target_names": target_names,
             "classes": sorted({r["label"] for r in manifest.records if isinstance(r.get("label"), str)})}
    (out / INDEX_FILE).write_text(json.dumps(index, indent=1))
    return shards


def _iter_tar(path: Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {suffix: bytes}) groups of consecutive members sharing a key."""
    key, group = None, {}
    with tarfile.open(path, "r") as tar:
        for member in tar:
            if not member.isfile():
                continue
            name = member.name.rsplit("/", 1)[-1]
            k, _, suffix = name.partition(".")
            if k != key and group:
                yield key, group
                group = {}
            key = k
            f = tar.extractfile(member)
            group["." + suffix] = f.read() if f is not None else b""
    if group:
        yield key, group


class ShardDataset(torch.utils.data.IterableDataset):
    """Stream sample dicts (same contract as ManifestDataset) from tar shards.

    urls: a shard folder (read through its index.json, which also gives the default `classes`: the sorted string
    labels, as ManifestDataset), or a list of .tar paths. Shards are split by rank
    (`shards[rank::world_size]`), then by DataLoader worker, so every sample is read once per epoch across the job
    when there are at least world_size × num_workers shards (fewer leaves some readers idle).
    shuffle_buffer: 0 = file order; otherwise a reservoir of that many samples, seeded by (seed, epoch, rank,
    worker). Undecodable images come back as {"error", "index", "path"} like ManifestDataset.
    """

    def __init__(self, urls: str | Path | Sequence[str | Path], transform=None, shuffle_buffer: int = 0,
                 seed: int = 0, rank: int = 0, world_size: int = 1, classes: Sequence[str] | None = None,
                 target_names: Sequence[str] | None = None):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        if shuffle_buffer < 0:
            raise ValueError(f"shuffle_buffer must be >= 0, got {shuffle_buffer}")
        if isinstance(urls, (str, Path)) and Path(urls).is_dir():
            index_path = Path(urls) / INDEX_FILE
            if not index_path.is_file():
                raise FileNotFoundError(f"{index_path} not found; write shards with `affectclip data shard`")
            index = json.loads(index_path.read_text())
            self.shards = [Path(urls) / s["name"] for s in index["shards"]]
            target_names = target_names if target_names is not None else index.get("target_names", [])
            classes = classes if classes is not None else index.get("classes") or None
        else:
            self.shards = [Path(u) for u in ([urls] if isinstance(urls, (str, Path)) else urls)]
        missing = [str(p) for p in self.shards if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"shard(s) not found: {missing[:5]}")
        self.transform, self.shuffle_buffer, self.seed = transform, shuffle_buffer, seed
        self.rank, self.world_size, self.epoch = rank, world_size, 0
        self.classes = list(classes) if classes is not None else None
        self.target_names = list(target_names or [])

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _my_shards(self) -> tuple[list[Path], int]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        mine = self.shards[self.rank::self.world_size][worker::workers]
        return mine, worker

    def _sample(self, shard: Path, key: str, group: dict[str, bytes], position: int) -> dict[str, Any]:
        where = f"{shard}:{key}"
        meta = json.loads(group[".json"]) if ".json" in group else {}
        image_suffix = next((s for s in group if s not in (".json", ".mask.png")), None)
        if image_suffix is None:
            return {"error": "no image member in the shard for this key", "index": position, "path": where}
        index = meta["index"] if isinstance(meta.get("index"), int) else position
        try:
            mask = io.BytesIO(group[".mask.png"]) if ".mask.png" in group else None
            sample = load_image_sample(io.BytesIO(group[image_suffix]), mask, self.transform)
        except DECODE_ERRORS as exc:
            return {"error": f"{type(exc).__name__}: {exc}", "index": index, "path": where}
        label = label_index(meta.get("label"), self.classes, index + 1)
        sample.update(record_fields({"id": key, **meta}, label, index, self.target_names))
        return sample

    def __iter__(self) -> Iterator[dict[str, Any]]:
        shards, worker = self._my_shards()
        rng = np.random.default_rng([self.seed, self.epoch, self.rank, worker])
        if self.shuffle_buffer:
            shards = [shards[i] for i in rng.permutation(len(shards))]
        buffer: list[dict[str, Any]] = []
        position = 0
        for shard in shards:
            for key, group in _iter_tar(shard):
                sample = self._sample(shard, key, group, position)
                position += 1
                if not self.shuffle_buffer:
                    yield sample
                    continue
                if len(buffer) < self.shuffle_buffer:
                    buffer.append(sample)
                    continue
                j = int(rng.integers(len(buffer)))
                yield buffer[j]
                buffer[j] = sample
        rng.shuffle(buffer)
        yield from buffer
