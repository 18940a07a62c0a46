"""Tar shards in WebDataset layout: `write_shards` packs a manifest, `ShardDataset` streams it back.

Why: millions of small files are slow on network filesystems and object stores; sequential tar reads are not.
Layout per sample (consecutive members sharing a key): `KEY.png|jpg|...` (the original bytes, never re-encoded),
optional `KEY.mask.png`, and `KEY.json` (the manifest record without its path, plus `source_path`). An
`index.json` next to the shards lists them with their sample counts and the target names, so readers agree on the
order of `targets` values without scanning the data.

Shards may come from elsewhere, so reading them trusts nothing: a member with an absolute or `..` name, one larger
than `MAX_MEMBER_BYTES` (refused from its header, before a byte is read: a 6 GB member of a gzip tar never reaches
memory), invalid JSON, a record that breaks the manifest schema or an unknown label all become one counted error
sample naming the shard and key; a malformed index.json is a one-line error naming it. Shards and index.json are
written atomically.
"""

from __future__ import annotations

import io
import itertools
import json
import lzma
import os
import re
import tarfile
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from affectclip.core.errors import UserError
from affectclip.core.outputs import display_path
from affectclip.data.datasets import DECODE_ERRORS, label_index, load_image_sample, record_fields
from affectclip.data.manifest import Manifest, ManifestError, normalize_row, path_kind

INDEX_FILE = "index.json"
_KEY_RE = re.compile(r"[^A-Za-z0-9_-]+")
# Largest tar member read into memory (an image, mask or JSON record): far above any face image, and what a
# reader holds per sample at most. Checked from the member's header before reading.
MAX_MEMBER_BYTES = 64 * 2**20
# What a damaged tar (or its gzip/xz/bz2 wrapper) raises while streaming.
_TAR_ERRORS = (tarfile.TarError, OSError, EOFError, zlib.error, lzma.LZMAError, ValueError)


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def write_shards(manifest: Manifest, out_dir: str | Path, max_size: int = 256 * 2**20, max_count: int = 1000,
                 ) -> list[Path]:
    """Pack the image rows of a manifest into out_dir/shard-NNNNNN.tar; a shard closes before it would pass
    `max_size` bytes or `max_count` samples. Video rows, missing files, files over `MAX_MEMBER_BYTES` and files
    outside the manifest's folder (unless the manifest was read with `allow_outside=True`, exactly as `data check`
    judges them) are errors naming the row. Each shard is written under a temporary name and renamed when full."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    shards: list[Path] = []
    counts: list[int] = []
    tar, size = None, 0
    seen: set[str] = set()

    def member_bytes(file: Path, row: int, field: str) -> bytes:
        if not file.is_file():
            raise ValueError(f"manifest row {row}: {field} file not found: {file}")
        if file.stat().st_size > MAX_MEMBER_BYTES:
            raise ValueError(f"manifest row {row}: {file} is larger than {MAX_MEMBER_BYTES // 2**20} MiB, the most "
                             "a shard member may hold; shrink or drop it")
        return file.read_bytes()

    def close() -> None:
        tar.close()
        os.replace(_partial(shards[-1]), shards[-1])

    try:
        for i, rec in enumerate(manifest.records):
            row = rec.get("_row", i + 1)
            src = manifest.resolve(rec["path"], row)
            if src.is_file() and path_kind(src) != "image":
                raise ValueError(f"manifest row {row}: {src} is not an image file; shards hold image rows only")
            members = {f".{src.suffix.lower().lstrip('.')}": member_bytes(src, row, "path")}
            if "mask" in rec:
                members[".mask.png"] = member_bytes(manifest.resolve(rec["mask"], row, "mask"), row, "mask")
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
                    close()
                    tar = None
                shards.append(out / f"shard-{len(shards):06d}.tar")
                tar, size = tarfile.open(_partial(shards[-1]), "w"), 0
                counts.append(0)
            for suffix, data in members.items():
                _add(tar, key + suffix, data)
            size += need
            counts[-1] += 1
        if tar is not None:
            close()
            tar = None
    finally:
        if tar is not None:  # an error: drop the incomplete shard
            tar.close()
            _partial(shards[-1]).unlink(missing_ok=True)
    target_names = list(dict.fromkeys(k for r in manifest.records for k in r.get("targets", {})))
    index = {"shards": [{"name": p.name, "count": c} for p, c in zip(shards, counts, strict=True)],
             "count": sum(counts), "target_names": target_names,
             "classes": sorted({r["label"] for r in manifest.records if isinstance(r.get("label"), str)})}
    from affectclip.core.io import atomic_write_json

    atomic_write_json(out / INDEX_FILE, index, indent=1)
    return shards


def _partial(shard: Path) -> Path:
    return shard.with_name(f".{shard.name}.partial")


def _member_problem(member: tarfile.TarInfo, max_bytes: int) -> str | None:
    """Why a member must not be read (a hostile name or an oversize body, judged from its header), or None."""
    name = member.name.replace("\\", "/")
    if name.startswith("/") or ".." in name.split("/"):
        return f"member {display_path(member.name)!r} has an absolute or '..' name; refused"
    if member.size > max_bytes:
        return (f"member {display_path(member.name)!r} declares {member.size:,} bytes, over the {max_bytes:,}-byte "
                "limit of a shard member; refused")
    return None


def _iter_tar(path: Path, max_member_bytes: int = MAX_MEMBER_BYTES) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {suffix: bytes}) groups of consecutive members sharing a key.

    A refused member (see `_member_problem`) turns its sample into one `{".error": message}` group; a corrupt or
    truncated tar ends with one such group (the samples read before the damage are kept; the incomplete one is
    dropped), so a long run counts the bad sample or shard instead of dying on it."""
    key, group = None, {}
    try:
        with tarfile.open(path, "r") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                k, _, suffix = member.name.replace("\\", "/").rsplit("/", 1)[-1].partition(".")
                if k != key and group:
                    yield key, group
                    group = {}
                key = k
                if ".error" in group:
                    continue  # the rest of a refused sample is not read either
                problem = _member_problem(member, max_member_bytes)
                if problem is not None:
                    group = {".error": problem.encode()}
                    continue
                f = tar.extractfile(member)
                group["." + suffix] = f.read() if f is not None else b""
    except _TAR_ERRORS as exc:
        if ".error" in group:  # a refused sample is complete: count it before the damage
            yield key, group
        reason = display_path(str(exc).splitlines()[0]) if str(exc) else type(exc).__name__
        message = f"unreadable shard ({reason}); the rest of this shard is skipped: re-write it with `affectclip data shard`"
        yield key or "", {".error": message.encode()}
        return
    if group:
        yield key, group


def count_samples(path: Path) -> int:
    """Number of sample keys in one tar (headers only), for shard lists that come without an index.json."""
    try:
        with tarfile.open(path, "r") as tar:
            return len({m.name.rsplit("/", 1)[-1].partition(".")[0] for m in tar if m.isfile()})
    except _TAR_ERRORS as exc:
        raise UserError(f"{path}: not a readable tar shard ({type(exc).__name__}: {exc}); re-write it with "
                        "`affectclip data shard` or leave it out") from None


def read_index(folder: Path) -> tuple[list[Path], list[int], list[str], list[str] | None]:
    """(shard paths, sample counts, target names, classes) from a shard folder's index.json; a `UserError` naming
    the file and the field for anything malformed, and for shard names that lead outside the folder."""
    from affectclip.core.paths import confined

    index_path = folder / INDEX_FILE
    if not index_path.is_file():
        raise FileNotFoundError(f"{index_path} not found; write shards with `affectclip data shard`")

    def bad(what: str) -> UserError:
        return UserError(f"{index_path}: {what}; re-write the shards with `affectclip data shard`")

    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise bad(f"not valid JSON ({type(exc).__name__}: {exc})") from None
    if not isinstance(index, dict) or not isinstance(index.get("shards"), list):
        raise bad("expected an object with a 'shards' list")
    shards, counts = [], []
    for n, entry in enumerate(index["shards"]):
        name, count = (entry.get("name"), entry.get("count")) if isinstance(entry, dict) else (None, None)
        if not isinstance(name, str) or not name or isinstance(count, bool) or not isinstance(count, int) \
                or not 0 <= count < 2**40:
            raise bad(f"shards[{n}] must be {{\"name\": file name, \"count\": samples >= 0}}, got {entry!r}")
        shards.append(confined(folder, name, f"{index_path} shards[{n}]"))
        counts.append(count)
    target_names, classes = index.get("target_names", []), index.get("classes") or None
    for key, value in (("target_names", target_names), ("classes", classes or [])):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise bad(f"'{key}' must be a list of strings")
    return shards, counts, target_names, classes


def batch_schedule(batches_per_worker: Sequence[int], skip: int) -> tuple[list[int], int]:
    """(batches each DataLoader worker produced among the first `skip`, the worker that produces the next one).

    An iterable DataLoader takes batches from its workers in turn (0, 1, ..., W-1, 0, ...) and drops a worker from
    the cycle once it is exhausted. Resuming mid-epoch must skip exactly those batches in each worker's own stream
    and start the new cycle at the worker that was next.
    """
    done, worker = [0] * len(batches_per_worker), 0
    for _ in range(skip):
        alive = [w for w in range(len(done)) if done[w] < batches_per_worker[w]]
        if not alive:
            break
        worker = next((w for w in alive if w >= worker), alive[0])
        done[worker] += 1
        worker = (worker + 1) % len(done)
    return done, worker


class ShardDataset(torch.utils.data.IterableDataset):
    """Stream sample dicts (same contract as ManifestDataset) from tar shards.

    urls: a shard folder (read through its index.json, which also gives the default `classes`: the sorted string
    labels, as ManifestDataset, and the sample counts), or a list of .tar paths. Shards are split by rank
    (`shards[rank::world_size]`), then by DataLoader worker, so every sample is read once per epoch across the job
    when there are at least world_size × num_workers shards (fewer leaves some readers idle).
    shuffle_buffer: 0 = file order; otherwise a reservoir of that many samples (kept undecoded, so memory is the
    compressed bytes), seeded by (seed, epoch, rank, worker). resampled: every reader draws shards with
    replacement from the whole list forever (WebDataset's `resampled=True`): ranks never run dry or out of step,
    at the price of epochs that are only nominal (`epoch_samples`, default the total sample count). Undecodable
    images come back as {"error", "index", "path"} like ManifestDataset.
    """

    def __init__(self, urls: str | Path | Sequence[str | Path], transform=None, shuffle_buffer: int = 0,
                 seed: int = 0, rank: int = 0, world_size: int = 1, classes: Sequence[str] | None = None,
                 target_names: Sequence[str] | None = None, resampled: bool = False,
                 epoch_samples: int | None = None, read_masks: bool = True):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        if shuffle_buffer < 0:
            raise ValueError(f"shuffle_buffer must be >= 0, got {shuffle_buffer}")
        if epoch_samples is not None and epoch_samples <= 0:
            raise ValueError(f"epoch_samples must be a positive number of samples, got {epoch_samples}")
        counts: list[int] | None = None
        if isinstance(urls, (str, Path)) and Path(urls).is_dir():
            self.shards, counts, index_targets, index_classes = read_index(Path(urls))
            target_names = target_names if target_names is not None else index_targets
            classes = classes if classes is not None else index_classes
        else:
            self.shards = [Path(u) for u in ([urls] if isinstance(urls, (str, Path)) else urls)]
        missing = [str(p) for p in self.shards if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"shard(s) not found: {missing[:5]}")
        self._counts = counts
        self.transform, self.shuffle_buffer, self.seed = transform, shuffle_buffer, seed
        self.read_masks = read_masks
        self.resampled, self.epoch_samples = resampled, epoch_samples
        self.rank, self.world_size, self.epoch = rank, world_size, 0
        self.batch_size, self.num_workers, self.skip_batches = 1, 0, 0
        self.classes = list(classes) if classes is not None else None
        self.target_names = list(target_names or [])
        self.max_member_bytes = MAX_MEMBER_BYTES

    @property
    def counts(self) -> list[int]:
        """Samples per shard (from index.json, else counted once from the tar headers)."""
        if self._counts is None:
            self._counts = [count_samples(p) for p in self.shards]
        return self._counts

    def plan(self, batch_size: int, num_workers: int, rank: int = 0, world_size: int = 1) -> int:
        """Fix the reader layout of a training job and return the full batches every rank delivers per epoch.

        Without resampling a rank gets sum over its workers of floor(samples / batch_size) batches; the epoch is the
        minimum over ranks, so DDP ranks take the same number of steps (the surplus of larger ranks is left unread
        that epoch, and differs between epochs only if the shard split does). 0 means some rank has no full batch.
        """
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        self.batch_size, self.num_workers, self.rank, self.world_size = batch_size, num_workers, rank, world_size
        if self.resampled:
            return (self.epoch_samples or sum(self.counts)) // (batch_size * world_size)
        return min(sum(self._worker_batches(r)) for r in range(world_size))

    def _worker_batches(self, rank: int) -> list[int]:
        workers = max(1, self.num_workers)
        mine = list(range(len(self.shards)))[rank::self.world_size]
        return [sum(self.counts[i] for i in mine[w::workers]) // self.batch_size for w in range(workers)]

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        """Select the epoch's shuffle and skip the first `skip_batches` batches of this rank (exact resume): the
        skipped samples are never decoded, so augmentation randomness stays where the interrupted run left it."""
        self.epoch, self.skip_batches = epoch, skip_batches

    def _my_role(self) -> tuple[int, int, int]:
        """(role, number of workers, samples to skip): which worker's share of the epoch this reader streams.

        Role = worker id, except after a mid-epoch resume, where the roles rotate so that DataLoader worker 0
        streams the share whose batch came next in the interrupted epoch."""
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        if not self.skip_batches:
            return worker, workers, 0
        per_worker = [10**18] * workers if self.resampled else self._worker_batches(self.rank)
        if len(per_worker) != workers:
            raise RuntimeError(f"planned for {len(per_worker)} DataLoader workers, iterated by {workers}")
        done, first = batch_schedule(per_worker, self.skip_batches)
        role = (first + worker) % workers
        return role, workers, done[role] * self.batch_size

    def _record(self, group: dict[str, bytes], position: int) -> dict[str, Any]:
        """A sample's JSON member checked against the manifest schema (the writer stored a manifest record): invalid
        JSON, wrong types, non-finite numbers and soft labels of the wrong length raise ValueError."""
        if ".json" not in group:
            return {}
        try:
            raw = json.loads(group[".json"].decode("utf-8"))
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
            raise ValueError(f"invalid JSON member ({type(exc).__name__}: {exc})") from None
        if not isinstance(raw, dict):
            raise ValueError(f"JSON member is a {type(raw).__name__}, not an object")
        extra = {k: raw.pop(k) for k in ("source_path", "index") if k in raw}
        if not raw:
            return {}
        try:
            rec = normalize_row({"path": "-", **raw}, position + 1)
        except ManifestError as exc:
            raise ValueError(f"JSON member: field {exc.field!r}: {exc.message}") from None
        del rec["path"]
        soft = rec.get("soft_label", rec.get("votes"))
        if soft is not None and self.classes is not None and len(soft) != len(self.classes):
            raise ValueError(f"JSON member: {len(soft)} soft-label values for {len(self.classes)} classes")
        if isinstance(extra.get("index"), int) and not isinstance(extra["index"], bool) and 0 <= extra["index"] < 2**62:
            rec["index"] = extra["index"]
        return rec

    def _sample(self, shard: Path, key: str, group: dict[str, bytes], position: int) -> dict[str, Any]:
        where = display_path(f"{shard}:{key}")
        if ".error" in group:  # the message names the member or the damage
            return {"error": group[".error"].decode(), "index": position, "path": display_path(shard)}
        image_suffix = next((s for s in group if s not in (".json", ".mask.png")), None)
        if image_suffix is None:
            return {"error": "no image member in the shard for this key", "index": position, "path": where}
        index = position
        try:
            meta = self._record(group, position)
            index = meta.get("index", position)
            label = label_index(meta.get("label"), self.classes, index + 1)
            mask = io.BytesIO(group[".mask.png"]) if self.read_masks and ".mask.png" in group else None
            sample = load_image_sample(io.BytesIO(group[image_suffix]), mask, self.transform, what=where)
            sample.update(record_fields({"id": key, **meta}, label, index, self.target_names))
        except DECODE_ERRORS as exc:
            return {"error": f"{type(exc).__name__}: {exc}", "index": index, "path": where}
        return sample

    def _raw(self, rng: np.random.Generator, shards: list[Path]) -> Iterator[tuple[Path, str, dict[str, bytes], int]]:
        """Undecoded (shard, key, members, position) in stream order: shuffled through the buffer if asked."""
        if self.resampled:
            source = (shards[int(rng.integers(len(shards)))] for _ in itertools.count())
        else:
            source = iter([shards[i] for i in rng.permutation(len(shards))] if self.shuffle_buffer else shards)
        buffer: list[tuple[Path, str, dict[str, bytes], int]] = []
        position = 0
        for shard in source:
            for key, group in _iter_tar(shard, self.max_member_bytes):
                item = (shard, key, group, position)
                position += 1
                if not self.shuffle_buffer:
                    yield item
                elif len(buffer) < self.shuffle_buffer:
                    buffer.append(item)
                else:
                    j = int(rng.integers(len(buffer)))
                    yield buffer[j]
                    buffer[j] = item
        order = rng.permutation(len(buffer))
        yield from (buffer[i] for i in order)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        role, workers, skip = self._my_role()
        # resampled: every reader draws from all shards; its seed keeps the streams apart
        shards = self.shards if self.resampled else self.shards[self.rank::self.world_size][role::workers]
        if not shards:
            return
        rng = np.random.default_rng([self.seed, self.epoch, self.rank, role])
        for n, (shard, key, group, position) in enumerate(self._raw(rng, shards)):
            if n >= skip:
                yield self._sample(shard, key, group, position)
