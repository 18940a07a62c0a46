"""Benchmark adapters: official dataset layouts -> items (path, native label index, split, fold).

Each benchmark is one row of `BENCHMARKS`: its native class order (evaluation.md §2.2), the tasks it supports, a
one-line description of the official layout, and a layout parser with its parameters. Parsers are shared between
similar layouts (a split/list file, class folders, file-name codes, Tandon-A EMOTIC arrays, CK+ sequences), so
adding a benchmark is adding a row. Labels stay in the dataset's native order; `prompt_names` maps them to the
canonical vocabulary for prompts. Nothing here downloads data: a missing folder or split file raises
`FileNotFoundError` naming the expected path and the official layout. A list-file row with a bad label or too few
fields becomes an `Item` with an `error`: it is counted as a failure of the evaluation, never ends it (only a split
with no usable row does).
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from affectclip.data.ferplus import FERPLUS_CLASSES
from affectclip.eval.prompts import to_canonical

MEDIA = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".mp4", ".avi", ".flv", ".mov", ".mkv", ".webm")


@dataclass(frozen=True)
class Item:
    path: str
    label: int  # native class index; -1 for multi-label / regression items
    split: str
    fold: int | None = None
    targets: tuple[float, ...] | None = None  # multi-hot categories then continuous values (EMOTIC, BoLD)
    error: str | None = None  # why this row cannot be evaluated (bad label, short row); None for a usable item


@dataclass(frozen=True)
class Benchmark:
    name: str
    classes: tuple[str, ...]
    tasks: tuple[str, ...]
    layout: str
    parser: Callable[..., list[Item]]
    splits: tuple[str, ...]
    folds: int = 0
    options: dict[str, Any] = field(default_factory=dict)
    continuous: tuple[str, ...] = ()
    compound: bool = False

    @property
    def prompt_names(self) -> list[str]:
        """Canonical (noun) names for prompts; compound names are kept whole (see prompts.compound_components)."""
        return [c if self.compound else to_canonical(c) for c in self.classes]

    def items(self, root: str | Path, split: str, fold: int | None = None) -> list[Item]:
        root = Path(root)
        if split not in self.splits:
            raise ValueError(f"{self.name} has splits {self.splits}, not '{split}'")
        if self.folds and fold not in range(1, self.folds + 1):
            raise ValueError(f"{self.name} needs --fold 1..{self.folds} (official folds; report the mean over folds)")
        if not root.is_dir():
            raise FileNotFoundError(f"{self.name}: dataset folder {root} does not exist; expected layout: {self.layout}")
        items = self.parser(self, root, split, fold, **self.options)
        if not items:
            raise ValueError(f"{self.name} split '{split}' under {root} is empty; expected layout: {self.layout}")
        if all(it.error for it in items):
            raise ValueError(f"{self.name} split '{split}' has no usable row; the first: {items[0].error}")
        return items

    def to_manifest(self, root: str | Path, split: str, out: str | Path,
                    fold: int | None = None) -> tuple[Path, list[dict[str, Any]]]:
        """Write the usable items as an affectclip manifest (absolute paths, native integer labels); returns it
        with a failure entry (`path`, `error`) for each row left out."""
        from affectclip.data.manifest import write_manifest

        root = Path(root).resolve()  # the manifest lives elsewhere (--output): a relative root would not resolve
        rows, skipped = [], []
        for it in self.items(root, split, fold):
            if it.error:
                skipped.append({"index": None, "path": it.path, "error": it.error})
                continue
            row: dict[str, Any] = {"path": str(root / it.path), "split": it.split, "id": it.path}
            if it.label >= 0:
                row["label"] = it.label
            if it.fold is not None:
                row["fold"] = it.fold
            if it.targets is not None:
                names = [*self.classes, *self.continuous]
                row["targets"] = dict(zip(names, it.targets, strict=True))
            rows.append(row)
        return write_manifest(rows, out), skipped


def _need(bench: Benchmark, path: Path) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"{bench.name}: expected {path} — official layout: {bench.layout}")
    return path


def _label_index(bench: Benchmark, raw: str, base: int, by_name: dict[str, int] | None, where: str) -> int:
    raw = raw.strip()
    if by_name is not None:
        key = raw.lower()
        if key not in by_name:
            raise ValueError(f"{where}: unknown {bench.name} class '{raw}'; expected one of {list(bench.classes)}")
        return by_name[key]
    try:
        idx = int(float(raw)) - base
    except ValueError:
        raise ValueError(f"{where}: label '{raw}' is not a number") from None
    if not 0 <= idx < len(bench.classes):
        raise ValueError(f"{where}: label {raw} outside the {len(bench.classes)} {bench.name} classes (base {base})")
    return idx


def parse_list_file(
    bench: Benchmark,
    root: Path,
    split: str,
    fold: int | None,
    file: str | Sequence[str],
    path_col: int | str | None = 0,
    label_col: int | str = 1,
    delimiter: str | None = None,
    header: bool = False,
    label_base: int = 0,
    by_name: dict[str, str] | None = None,
    path_fmt: str | Sequence[str] = "{}",
    split_names: dict[str, str] | None = None,
    split_prefix: bool = False,
    split_col: str | None = None,
    skip_labels: Sequence[str] = (),
    encoding: str = "utf-8",
) -> list[Item]:
    """A split/list file with one sample per row: path (or id) and label, by column index or header name.

    `file` may contain `{split}` (renamed through `split_names`) and `{fold}`; `file` and `path_fmt` may list
    alternative spellings (the first that exists is used). When one list holds all splits, rows
    are kept whose path starts with the split name (`split_prefix`, RAF-DB) or whose `split_col` equals it. A
    `path_col` of None means the path is built from the 0-based data-row number (FER2013 exports). Labels are numbers with
    `label_base` (1 for 1-based files) or class names (`by_name`: lower-case native spelling -> class); rows whose
    label is in `skip_labels` (blank, AffectNet codes 8-10) are left out.
    """
    sname = (split_names or {}).get(split, split)
    path = _first_existing(bench, root, [f.format(split=sname, fold=fold) for f in _alternatives(file)])
    names = {k.lower(): bench.classes.index(v) for k, v in by_name.items()} if by_name is not None else None
    with open(path, encoding=encoding, newline="") as fh:
        if delimiter is None:
            rows = [ln.split() for ln in fh if ln.strip()]
        else:
            rows = list(csv.reader(fh, delimiter=delimiter))
    if header:
        head, rows = [h.strip() for h in rows[0]], rows[1:]
        missing = [c for c in (path_col, label_col, split_col) if isinstance(c, str) and c not in head]
        if missing:
            raise ValueError(f"{path}: header lacks column(s) {missing}; found {head}")
        path_col, label_col, split_col = (head.index(c) if isinstance(c, str) else c
                                          for c in (path_col, label_col, split_col))
    cols = [c for c in (path_col, label_col, split_col) if c is not None]
    items = []
    for i, row in enumerate(rows):
        n = i + 2 if header else i + 1
        if split_prefix and len(row) > path_col and not row[path_col].strip().startswith(sname):
            continue  # another split's row (checked first, so a short row is reported in its own split only)
        if len(row) <= max(cols):
            items.append(Item(f"{path.name}:{n}", -1, split, fold,
                              error=f"{path}, line {n}: expected ≥ {max(cols) + 1} fields, got {row}"))
            continue
        rel = str(i) if path_col is None else row[path_col].strip()
        raw = row[label_col].strip()
        if raw in skip_labels:
            continue
        if split_col is not None and row[split_col].strip() != sname:
            continue
        try:
            items.append(Item(rel, _label_index(bench, raw, label_base, names, f"{path}, line {n}"), split, fold))
        except ValueError as exc:
            items.append(Item(rel, -1, split, fold, error=str(exc)))
    return _media_paths(root, items, path_fmt, split)


def _alternatives(value: str | Sequence[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def _first_existing(bench: Benchmark, root: Path, candidates: Sequence[str]) -> Path:
    """The first of several known spellings of a file/folder (releases and popular loaders rename them)."""
    for rel in candidates:
        if (root / rel).exists():
            return root / rel
    if len(candidates) == 1:
        return _need(bench, root / candidates[0])
    raise FileNotFoundError(f"{bench.name}: expected one of {[str(root / c) for c in candidates]} — official layout: "
                            f"{bench.layout}")


def _media_paths(root: Path, items: list[Item], path_fmt: str | Sequence[str], split: str) -> list[Item]:
    """Turn list-file ids into media paths with the first `path_fmt` whose first item exists (clips vs extracted
    frame folders); when none exists the first format is kept and missing files are reported as sample errors."""
    fmts = _alternatives(path_fmt)

    def fmt(f: str, rel: str) -> str:
        return f.format(rel, stem=Path(rel).stem, split=split)

    probe = next((it.path for it in items if not it.error), None)
    chosen = next((f for f in fmts if probe is not None and (root / fmt(f, probe)).exists()), fmts[0])
    return [it if it.error else replace(it, path=fmt(chosen, it.path)) for it in items]


def parse_class_folders(bench: Benchmark, root: Path, split: str, fold: int | None,
                        split_dirs: dict[str, str | Sequence[str]], folders: dict[str, str]) -> list[Item]:
    """`root/<split dir>/<class folder>/<files>` (ImageFolder-like); folder names map to native classes.

    A split dir may have alternative spellings, and several folder names may map to one class (AFEW's original
    Angry/Happy/Sad vs the face-crop release's Anger/Happiness/Sadness); every class needs one existing folder.
    """
    base = _first_existing(bench, root, _alternatives(split_dirs[split]))
    items = []
    for cls in dict.fromkeys(folders.values()):
        dirs = [base / f for f, c in folders.items() if c == cls and (base / f).is_dir()]
        if not dirs:
            names = [f for f, c in folders.items() if c == cls]
            raise FileNotFoundError(f"{bench.name}: class folder {base}/{'|'.join(names)} missing — official layout: "
                                    f"{bench.layout}")
        label = bench.classes.index(cls)
        items += [Item(str(p.relative_to(root)), label, split)
                  for d in dirs for p in sorted(d.iterdir()) if not p.name.startswith(".")]
    return items


def parse_filename_codes(bench: Benchmark, root: Path, split: str, fold: int | None, pattern: str,
                         codes: dict[str, str]) -> list[Item]:
    """Every media file under root whose name matches `pattern`; its first group is a class code (JAFFE, RAVDESS...)."""
    rx = re.compile(pattern)
    items = []
    for p in sorted(root.rglob("*")):
        m = rx.search(p.name) if p.suffix.lower() in MEDIA else None
        if m and m.group(1) in codes:
            items.append(Item(str(p.relative_to(root)), bench.classes.index(codes[m.group(1)]), split))
    return items


def parse_ckplus(bench: Benchmark, root: Path, split: str, fold: int | None) -> list[Item]:
    """CK+: `Emotion/S005/001/S005_001_<frame>_emotion.txt` holds the label (0-7) of the peak frame
    `cohn-kanade-images/S005/001/S005_001_<frame>.png`; only the 327 labelled sequences are items."""
    emo, images = _need(bench, root / "Emotion"), _need(bench, root / "cohn-kanade-images")
    items = []
    for f in sorted(emo.rglob("*_emotion.txt")):
        label = _label_index(bench, f.read_text().strip() or "nan", 0, None, str(f))
        frame = images / f.parent.relative_to(emo) / f.name.replace("_emotion.txt", ".png")
        items.append(Item(str(_need(bench, frame).relative_to(root)), label, split))
    return items


def parse_emotic(bench: Benchmark, root: Path, split: str, fold: int | None) -> list[Item]:
    """Tandon-A `mat2py.py` output: `{split}.csv` (Folder, Filename columns) with `{split}_cat_arr.npy` [N,26] and
    `{split}_cont_arr.npy` [N,3] aligned by row."""
    table = _need(bench, root / f"{split}.csv")
    cat = np.load(_need(bench, root / f"{split}_cat_arr.npy"))
    cont = np.load(_need(bench, root / f"{split}_cont_arr.npy"))
    with open(table, encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not (len(rows) == len(cat) == len(cont)) or cat.shape[1:] != (len(bench.classes),):
        raise ValueError(f"{root}: {split}.csv has {len(rows)} rows but the arrays are {cat.shape} / {cont.shape}; "
                         "regenerate them together with mat2py.py")
    return [Item(str(Path(r["Folder"]) / r["Filename"]), -1, split, None, (*map(float, c), *map(float, v)))
            for r, c, v in zip(rows, cat, cont, strict=True)]


def parse_bold(bench: Benchmark, root: Path, split: str, fold: int | None) -> list[Item]:
    """BoLD `annotations/{split}.csv` (no header): video id, person id, start frame, end frame, 26 category scores
    (≥ 0.5 -> positive, as EmotionCLIP), valence, arousal, dominance, gender, age, ethnicity, confidence; clips under
    `videos/`, or frame folders under `mmextract/` (EmotionCLIP). The whole clip is used: the person's start/end
    frames and joints (EmotionCLIP's subject mask) are not applied."""
    table = _need(bench, root / "annotations" / f"{split}.csv")
    k = len(bench.classes)
    items = []
    with open(table, encoding="utf-8", newline="") as fh:
        for n, row in enumerate(csv.reader(fh), start=1):
            if len(row) < 4 + k + 3:
                raise ValueError(f"{table}, line {n}: expected ≥ {4 + k + 3} columns, got {len(row)}")
            cats = [float(float(x) >= 0.5) for x in row[4 : 4 + k]]
            items.append(Item(row[0], -1, split, None, (*cats, *map(float, row[4 + k : 7 + k]))))
    return _media_paths(root, items, ("videos/{}", "mmextract/{}"), split)


BASIC7_FOLDERS = ("Angry", "Disgust", "Fear", "Happy", "Neutral", "Sad", "Surprise")
EMOTIC_26 = (
    "Affection", "Anger", "Annoyance", "Anticipation", "Aversion", "Confidence", "Disapproval", "Disconnection",
    "Disquietment", "Doubt/Confusion", "Embarrassment", "Engagement", "Esteem", "Excitement", "Fatigue", "Fear",
    "Happiness", "Pain", "Peace", "Pleasure", "Sadness", "Sensitivity", "Suffering", "Surprise", "Sympathy", "Yearning",
)
BOLD_26 = (
    "peace", "affection", "esteem", "anticipation", "engagement", "confidence", "happiness", "pleasure", "excitement",
    "surprise", "sympathy", "doubt/confusion", "disconnection", "fatigue", "embarrassment", "yearning", "disapproval",
    "aversion", "annoyance", "anger", "sensitivity", "sadness", "disquietment", "fear", "pain", "suffering",
)
DFEW_7 = ("happiness", "sadness", "neutral", "anger", "surprise", "disgust", "fear")
MAFW_11 = ("anger", "disgust", "fear", "happiness", "neutral", "sadness", "surprise", "contempt", "anxiety",
           "helplessness", "disappointment")
RAF_COMPOUND = ("happily surprised", "happily disgusted", "sadly fearful", "sadly angry", "sadly surprised",
                "sadly disgusted", "fearfully angry", "fearfully surprised", "angrily surprised", "angrily disgusted",
                "disgustedly surprised")
FER_CSV_7 = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
AFFECTNET_8 = ("neutral", "happy", "sad", "surprise", "fear", "disgust", "anger", "contempt")
CLS = ("zeroshot", "linear_probe", "fewshot")
ML = ("linear_probe", "regression")


def _by_own_name(classes: Sequence[str]) -> dict[str, str]:
    return {c: c for c in classes}


def _folders(classes: Sequence[str], names: Sequence[str] = BASIC7_FOLDERS) -> dict[str, str]:
    """Folder name -> native class, matching through the canonical vocabulary."""
    canon = {to_canonical(c): c for c in classes}
    return {n: canon[to_canonical(n)] for n in names}


def _b(name: str, classes: Sequence[str], layout: str, parser: Callable[..., list[Item]], splits: Sequence[str],
       tasks: Sequence[str] = CLS, **kw: Any) -> Benchmark:
    return Benchmark(name, tuple(classes), tuple(tasks), layout, parser, tuple(splits), **kw)


_RAF = "Image/aligned/{stem}_aligned.jpg"
BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in [
    _b("rafdb", ("surprise", "fear", "disgust", "happiness", "sadness", "anger", "neutral"),
       "EmoLabel/list_patition_label.txt ('train_00001.jpg 5', labels 1-7) + Image/aligned/<name>_aligned.jpg",
       parse_list_file, ("train", "test"),
       options={"file": "EmoLabel/list_patition_label.txt", "label_base": 1, "path_fmt": _RAF, "split_prefix": True}),
    _b("rafdb_compound", RAF_COMPOUND,
       "EmoLabel/list_patition_label.txt ('train_0001.jpg 3', labels 1-11) + Image/aligned/<name>_aligned.jpg",
       parse_list_file, ("train", "test"), compound=True,
       options={"file": "EmoLabel/list_patition_label.txt", "label_base": 1, "path_fmt": _RAF, "split_prefix": True}),
    *[_b(f"affectnet{k}", AFFECTNET_8[:k],
         "Manually_Annotated_file_lists/{training,validation}.csv (subDirectory_filePath, ..., expression 0-10) + "
         "Manually_Annotated_Images/; the validation set is the test set",
         parse_list_file, ("train", "test"),
         options={"file": "Manually_Annotated_file_lists/{split}.csv", "delimiter": ",", "header": True,
                  "path_col": "subDirectory_filePath", "label_col": "expression",
                  "path_fmt": "Manually_Annotated_Images/{}", "split_names": {"train": "training", "test": "validation"},
                  "skip_labels": tuple(str(i) for i in range(k, 11))})
      for k in (7, 8)],
    _b("ferplus", FERPLUS_CLASSES,
       "labels.csv (path, label = FER+ majority-rule class name or blank, split train/valid/test) + images/<split>/",
       parse_list_file, ("train", "valid", "test"),
       options={"file": "labels.csv", "delimiter": ",", "header": True, "path_col": "path", "label_col": "label",
                "by_name": _by_own_name(FERPLUS_CLASSES), "skip_labels": ("",), "split_col": "split"}),
    _b("ferplus7", FERPLUS_CLASSES[:7], "as ferplus; contempt rows dropped (7-class protocol)", parse_list_file,
       ("train", "valid", "test"),
       options={"file": "labels.csv", "delimiter": ",", "header": True, "path_col": "path", "label_col": "label",
                "by_name": _by_own_name(FERPLUS_CLASSES[:7]), "skip_labels": ("", "contempt"), "split_col": "split"}),
    _b("fer2013", FER_CSV_7, "fer2013.csv (emotion 0-6, pixels, Usage Training/PublicTest/PrivateTest) + the pixel rows "
       "exported as images/{train,valid,test}/fer<row, 7 digits>.png (the FER+ image naming)", parse_list_file,
       ("train", "valid", "test"),
       options={"file": "fer2013.csv", "delimiter": ",", "header": True, "path_col": None, "label_col": "emotion",
                "split_col": "Usage", "split_names": {"train": "Training", "valid": "PublicTest", "test": "PrivateTest"},
                "path_fmt": "images/{split}/fer{:0>7}.png"}),
    _b("fer2013_folders", ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"),
       "Kaggle msambare/fer2013: {train,test}/{angry,disgust,fear,happy,neutral,sad,surprise}/*.jpg",
       parse_class_folders, ("train", "test"),
       options={"split_dirs": {"train": "train", "test": "test"},
                "folders": _by_own_name(("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"))}),
    _b("sfew", BASIC7_FOLDERS, "SFEW 2.0: {Train,Val}/{Angry,Disgust,Fear,Happy,Neutral,Sad,Surprise}/*.png; "
       "test labels are not public: evaluate on 'val'", parse_class_folders, ("train", "val"),
       options={"split_dirs": {"train": "Train", "val": "Val"}, "folders": _by_own_name(BASIC7_FOLDERS)}),
    _b("afew", DFEW_7, "AFEW 7.0: {Train_AFEW,Val_AFEW}/{Angry,...,Surprise}/*.avi, or the face-crop release "
       "AFEW_Face/{train,validation}/{Anger,...,Surprise}/<clip>/ frame folders (EmoCLIP); test labels are not "
       "public: evaluate on 'val' (mapped to the DFEW order, as EmoCLIP)", parse_class_folders, ("train", "val"),
       options={"split_dirs": {"train": ("Train_AFEW", "AFEW_Face/train"), "val": ("Val_AFEW", "AFEW_Face/validation")},
                "folders": _folders(DFEW_7, (*BASIC7_FOLDERS, "Anger", "Happiness", "Sadness"))}),
    _b("ckplus", ("neutral", "anger", "contempt", "disgust", "fear", "happy", "sadness", "surprise"),
       "CK+: Emotion/S*/NNN/*_emotion.txt + cohn-kanade-images/S*/NNN/*.png (327 labelled peak frames)",
       parse_ckplus, ("all",)),
    _b("jaffe", ("AN", "DI", "FE", "HA", "NE", "SA", "SU"), "JAFFE: <poser>.<CODE><n>.<id>.tiff files, e.g. KA.AN1.39.tiff",
       parse_filename_codes, ("all",),
       options={"pattern": r"^[A-Z]{2}\.([A-Z]{2})\d", "codes": _by_own_name(("AN", "DI", "FE", "HA", "NE", "SA", "SU"))}),
    _b("cremad", ("ANG", "DIS", "FEA", "HAP", "NEU", "SAD"), "CREMA-D: VideoFlash/<actor>_<sentence>_<EMO>_<level>.flv",
       parse_filename_codes, ("all",),
       options={"pattern": r"^\d+_[A-Z]+_([A-Z]{3})_", "codes": _by_own_name(("ANG", "DIS", "FEA", "HAP", "NEU", "SAD"))}),
    _b("ravdess", ("neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised"),
       "RAVDESS: Actor_NN/MM-VV-EE-II-SS-RR-AA.mp4 (field 3 = emotion 01-08)", parse_filename_codes, ("all",),
       options={"pattern": r"^\d\d-\d\d-(\d\d)-", "codes": {f"{i + 1:02d}": c for i, c in enumerate(
           ("neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised"))}}),
    _b("enterface05", ("anger", "disgust", "fear", "happiness", "sadness", "surprise"),
       "eNTERFACE'05: subject N/<emotion>/sentence N/sN_<an|di|fe|ha|sa|su>_N.avi", parse_filename_codes, ("all",),
       options={"pattern": r"_(an|di|fe|ha|sa|su)_\d+\.", "codes": dict(zip(
           ("an", "di", "fe", "ha", "sa", "su"), ("anger", "disgust", "fear", "happiness", "sadness", "surprise"), strict=True))}),
    _b("dfew", DFEW_7, "DFEW: EmoLabel_DataSplit/{train,test}(single-labeled)/set_{1..5}.csv (video_name,label 1-7) "
       "+ Clip/clip_224x224/<video_name zero-padded to 5>/ frame folders (or Clip/jpg_256/, MAE-DFER)", parse_list_file,
       ("train", "test"), folds=5,
       options={"file": "EmoLabel_DataSplit/{split}(single-labeled)/set_{fold}.csv", "delimiter": ",", "header": True,
                "path_col": "video_name", "label_col": "label", "label_base": 1,
                "path_fmt": ("Clip/clip_224x224/{:0>5}", "Clip/jpg_256/{:0>5}")}),
    _b("ferv39k", ("Happy", "Sad", "Neutral", "Angry", "Surprise", "Disgust", "Fear"),
       "FERV39k: 4_setups/All_scenes/{train,test}_All.csv ('<scene>/<scene>_<Class>/<id>/<id> <Class name>', space-"
       "separated, no header) + 2_ClipsforFaceCrop/<clip dir>/", parse_list_file, ("train", "test"),
       options={"file": "4_setups/All_scenes/{split}_All.csv", "path_fmt": "2_ClipsforFaceCrop/{}",
                "by_name": _by_own_name(("Happy", "Sad", "Neutral", "Angry", "Surprise", "Disgust", "Fear"))}),
    _b("mafw", MAFW_11, "MAFW: {Train & Test Set,split}/single/no_caption/set_{1..5}/{train,test}.txt or EmoCLIP's "
       "Train_Test_Set/single/no_caption_new/ ('<clip>.mp4 <class name>') + data/clips/<clip>.mp4, or frame "
       "folders data/frames/<id>/ (MAE-DFER) or data/faces/<id>/ (EmoCLIP)", parse_list_file, ("train", "test"),
       folds=5,
       options={"file": tuple(f"{d}/single/{c}/set_{{fold}}/{{split}}.txt" for d, c in (
                    ("Train & Test Set", "no_caption"), ("split", "no_caption"), ("Train_Test_Set", "no_caption_new"))),
                "by_name": _by_own_name(MAFW_11), "path_fmt": ("data/clips/{}", "data/frames/{stem}", "data/faces/{stem}"),
                "encoding": "gbk"}),
    _b("emotic", EMOTIC_26, "EMOTIC after Tandon-A mat2py.py: {train,val,test}.csv + {split}_cat_arr.npy + "
       "{split}_cont_arr.npy + the images under <Folder>/<Filename>", parse_emotic, ("train", "val", "test"),
       tasks=ML, continuous=("valence", "arousal", "dominance")),
    _b("bold", BOLD_26, "BoLD: annotations/{train,val}.csv + videos/ (or mmextract/ frames); test labels unreleased: evaluate on 'val'",
       parse_bold, ("train", "val"), tasks=ML, continuous=("valence", "arousal", "dominance")),
]}


def get_benchmark(name: str) -> Benchmark:
    if name not in BENCHMARKS:
        raise KeyError(f"unknown benchmark '{name}'; available: {', '.join(sorted(BENCHMARKS))}")
    return BENCHMARKS[name]


def list_benchmarks() -> list[dict[str, Any]]:
    return [{"name": b.name, "tasks": list(b.tasks), "classes": list(b.classes), "splits": list(b.splits),
             "folds": b.folds, "layout": b.layout} for b in BENCHMARKS.values()]
