"""BlazeFace, MediaPipe's face detector, run with LiteRT (`ai-edge-litert`) and decoded in numpy.

Two models, both from the `mediapipe==0.10.14` wheel (Apache-2.0; the files and their
licence are in `tasks/models/`, pinned by SHA-256 in `tasks/infra/models.py`):

- short range (128 x 128 input, 896 anchors): faces that fill much of the image, such as
  dataset crops and portraits;
- full range (192 x 192 input, 2,304 anchors): small and distant faces, such as group photos.

Both run on the letterboxed image; their detections are merged by non-maximum suppression
(IoU 0.3), the highest score first. The anchors follow MediaPipe's SsdAnchorsCalculator with
fixed anchor size (short range: strides 8, 16, 16, 16 with two anchors per layer; full range:
stride 4, one anchor), and a box is (x, y, w, h) regressed from its anchor's centre, in input
pixels. Runs on any Python that `ai-edge-litert` has wheels for (3.11 to 3.13).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
from PIL import Image

from tasks.infra import models


@dataclass(frozen=True)
class Spec:
    model: str  # name in tasks.infra.models
    size: int
    grids: tuple[tuple[int, int], ...]  # (cells per side, anchors per cell), in output order


SHORT = Spec("blazeface_short", 128, ((16, 2), (8, 6)))
FULL = Spec("blazeface_full", 192, ((48, 1),))
IOU = 0.3

_lock = threading.Lock()
_cache: dict[str, tuple[object, np.ndarray]] = {}


def anchors(spec: Spec) -> np.ndarray:
    """Anchor centres (x, y) in [0, 1], in the model's output order."""
    out = []
    for grid, per in spec.grids:
        ys, xs = np.meshgrid((np.arange(grid) + 0.5) / grid, (np.arange(grid) + 0.5) / grid, indexing="ij")
        out.append(np.repeat(np.stack([xs.ravel(), ys.ravel()], 1), per, axis=0))
    return np.concatenate(out)


def _model(spec: Spec):
    if spec.model not in _cache:
        from ai_edge_litert.interpreter import Interpreter

        it = Interpreter(model_path=str(models.path(spec.model)), num_threads=1)
        it.allocate_tensors()
        _cache[spec.model] = (it, anchors(spec))
    return _cache[spec.model]


def _letterbox(im: Image.Image, size: int) -> tuple[np.ndarray, float, int, int]:
    s = size / max(im.size)
    w, h = max(1, round(im.width * s)), max(1, round(im.height * s))
    canvas = Image.new("RGB", (size, size))
    ox, oy = (size - w) // 2, (size - h) // 2
    canvas.paste(im.resize((w, h), Image.BILINEAR), (ox, oy))
    return (np.asarray(canvas, np.float32) / 127.5 - 1.0)[None], s, ox, oy


def _run(spec: Spec, im: Image.Image, min_score: float) -> tuple[np.ndarray, np.ndarray]:
    """Boxes (x1, y1, x2, y2 in image pixels) and scores above `min_score` of one model."""
    x, s, ox, oy = _letterbox(im, spec.size)
    with _lock:  # one interpreter per model, not thread-safe
        it, anc = _model(spec)
        it.set_tensor(it.get_input_details()[0]["index"], x)
        it.invoke()
        outs = sorted((it.get_tensor(o["index"]) for o in it.get_output_details()), key=lambda a: a.shape[-1])
    cls, reg = outs[0][0, :, 0].astype(np.float64), outs[1][0]
    score = 1.0 / (1.0 + np.exp(-np.clip(cls, -80, 80)))
    keep = score >= min_score
    r, a = reg[keep], anc[keep]
    cx, cy = r[:, 0] / spec.size + a[:, 0], r[:, 1] / spec.size + a[:, 1]
    w, h = r[:, 2] / spec.size, r[:, 3] / spec.size
    b = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1) * spec.size
    b = (b - np.array([ox, oy, ox, oy])) / s
    return b, score[keep]


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float = IOU) -> list[int]:
    """Indices kept by greedy non-maximum suppression, highest score first."""
    order, keep = np.argsort(-scores, kind="stable"), []
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(int(i))
        xx1, yy1 = np.maximum(boxes[i, 0], boxes[rest, 0]), np.maximum(boxes[i, 1], boxes[rest, 1])
        xx2, yy2 = np.minimum(boxes[i, 2], boxes[rest, 2]), np.minimum(boxes[i, 3], boxes[rest, 3])
        inter = np.clip(xx2 - xx1, 0, None) * np.clip(yy2 - yy1, 0, None)
        order = rest[inter / (area[i] + area[rest] - inter + 1e-9) < iou]
    return keep


def detect(im: Image.Image, min_score: float) -> list[tuple[float, float, float, float, float]]:
    """(x, y, w, h, score) of every face, from both models, merged."""
    parts = [_run(spec, im, min_score) for spec in (SHORT, FULL)]
    boxes = np.concatenate([b for b, _ in parts])
    scores = np.concatenate([s for _, s in parts])
    if not len(scores):
        return []
    out = []
    for i in nms(boxes, scores):
        x1, y1, x2, y2 = (float(v) for v in boxes[i])
        out.append((x1, y1, x2 - x1, y2 - y1, float(scores[i])))
    return out
