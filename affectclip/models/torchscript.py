"""Read the tensors of a TorchScript archive without running anything from it.

OpenAI distributes CLIP as TorchScript archives. `torch.jit.load` would compile and run the archive's own code
(a scripted `__setstate__` runs on load, so a crafted file can write files), and `torch.load(weights_only=True)`
refuses TorchScript archives. This reader unpickles the archive's `data.pkl` with an allowlist: tensors are
rebuilt from the raw `data/` records, `OrderedDict` is the only container class, and every scripted class
(`__torch__.*`) becomes an inert record of its attributes. No class from the file is instantiated and no code from
its `code/` folder is read, so nothing in the file can execute.
"""

from __future__ import annotations

import io
import os
import pickle
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

_STORAGE_DTYPES = {
    "FloatStorage": torch.float32,
    "DoubleStorage": torch.float64,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}
_MAX_DEPTH = 64


class _ScriptRecord:
    """Stands in for a scripted module/class: keeps whatever state the pickle hands to BUILD, runs nothing."""

    def __init__(self, *args: Any) -> None:
        self.state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state


def _rebuild_tensor(storage: torch.Tensor, offset: int, size: tuple, stride: tuple, *rest: Any) -> torch.Tensor:
    """`torch._utils._rebuild_tensor_v2` on our flat storage tensor; bounds are checked, not trusted."""
    extent = offset + sum((s - 1) * st for s, st in zip(size, stride, strict=True) if s > 0)
    if any(s < 0 for s in size) or any(st < 0 for st in stride) or offset < 0 or (
        all(s > 0 for s in size) and extent >= max(storage.numel(), 1)
    ):
        raise pickle.UnpicklingError(f"tensor view {tuple(size)} at offset {offset} exceeds its storage")
    return storage.as_strided(tuple(size), tuple(stride), offset)


class _Unpickler(pickle.Unpickler):
    def __init__(self, archive: zipfile.ZipFile, root: str, limit: int) -> None:
        self.archive, self.root, self.limit = archive, root, limit
        super().__init__(io.BytesIO(self.read("data.pkl")))
        self.storages: dict[str, torch.Tensor] = {}

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]
        if module == "collections" and name == "OrderedDict":
            return OrderedDict
        if module.startswith("__torch__"):
            return _ScriptRecord
        raise pickle.UnpicklingError(f"refusing to load '{module}.{name}' (only tensors and modules' attributes)")

    def read(self, name: str) -> bytes:
        """A record no larger than the archive itself (an uncompressed archive's records never are): no bombs."""
        info = self.archive.getinfo(f"{self.root}/{name}")
        if info.file_size > self.limit:
            raise pickle.UnpicklingError(f"record '{name}' claims {info.file_size} bytes, more than the whole file")
        return self.archive.read(info)

    def persistent_load(self, pid: Any) -> torch.Tensor:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], torch.dtype)):
            raise pickle.UnpicklingError(f"unexpected persistent record {pid!r:.80}")
        _, dtype, key, _location, numel = pid
        if key not in self.storages:
            raw = self.read(f"data/{key}")
            itemsize = torch.empty(0, dtype=dtype).element_size()
            if not isinstance(numel, int) or len(raw) < numel * itemsize:
                raise pickle.UnpicklingError(f"storage record '{key}' holds {len(raw)} bytes, too few for {numel} items")
            self.storages[key] = torch.frombuffer(bytearray(raw[: numel * itemsize]), dtype=dtype) if numel else (
                torch.empty(0, dtype=dtype))
        return self.storages[key]


def _collect(obj: Any, prefix: str, out: dict[str, torch.Tensor], depth: int = 0) -> None:
    if depth > _MAX_DEPTH:
        raise pickle.UnpicklingError("module tree nested too deeply")
    if isinstance(obj, _ScriptRecord):
        obj = obj.state
    if not isinstance(obj, dict):
        return
    for key, value in obj.items():
        if not isinstance(key, str):
            continue
        if isinstance(value, torch.Tensor):
            out[prefix + key] = value.clone()
        elif isinstance(value, (_ScriptRecord, dict)):
            _collect(value, f"{prefix}{key}.", out, depth + 1)


def read_torchscript_tensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Every tensor attribute of a TorchScript archive's module tree, by dotted name (what `state_dict()` gives,
    plus plain tensor attributes such as OpenAI's `attn_mask`). Raises `pickle.UnpicklingError`/`zipfile` errors
    on anything that is not a plain archive of tensors."""
    path = Path(path)
    with zipfile.ZipFile(path) as archive:
        names = [n for n in archive.namelist() if n.endswith("data.pkl") and n.count("/") == 1]
        if len(names) != 1:
            raise pickle.UnpicklingError("the archive has no single '<name>/data.pkl' record")
        root = names[0].split("/")[0]
        byteorder = f"{root}/byteorder"
        if byteorder in archive.namelist() and archive.read(byteorder).strip() not in (b"little", b""):
            raise pickle.UnpicklingError("big-endian archives are not supported")
        obj = _Unpickler(archive, root, path.stat().st_size).load()
    out: dict[str, torch.Tensor] = {}
    _collect(obj, "", out)
    return out
