"""Face detection and cropping.

Detectors (`crop.detector`), none of which downloads anything at run time:

- `blazeface` (default): MediaPipe's BlazeFace short- and full-range models on LiteRT
  (`tasks/infra/blazeface.py`; model files in `tasks/models/`, Apache-2.0). Runs on
  Python 3.11 to 3.13.
- `yuface`: libfacedetection's CNN as shipped (weights compiled in) by the `yuface` wheel
  (BSD-3), which exists for Python <= 3.11 only. Images are downscaled to `max_side` first,
  because the model degrades on large inputs, and boxes are mapped back.

`benchmarks/detector_compare.py` measures the two side by side.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps


@dataclass(frozen=True)
class Box:
    x: float
    y: float
    w: float
    h: float
    score: float


def decode(data: bytes) -> Image.Image:
    """Decode image bytes to RGB, honouring EXIF orientation. Raises on corrupt data."""
    im = Image.open(io.BytesIO(data))  # an animation: its first frame
    im.load()
    im = ImageOps.exif_transpose(im)
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16/32-bit grey: scale to 8 bits, not clip
        import numpy as np

        a = np.asarray(im, dtype=np.float64)
        top = 65535.0 if im.mode.startswith("I;16") else max(float(a.max()), 1.0)
        im = Image.fromarray(np.clip(a * (255.0 / top), 0, 255).astype(np.uint8), "L")
    return im.convert("RGB")


def detect_faces(
    im: Image.Image, *, min_score: float, min_size: int, max_side: int, detector: str = "blazeface"
) -> list[Box]:
    """All faces in the image at least `min_size` px wide, largest first."""
    if detector == "blazeface":
        from tasks.infra import blazeface

        found = [Box(*b) for b in blazeface.detect(im, min_score)]
        return sorted((b for b in found if min(b.w, b.h) >= min_size), key=lambda b: -b.w * b.h)
    try:
        import yuface
    except ImportError:
        raise RuntimeError(
            "crop.detector: yuface needs the `yuface` package (wheels for Python <= 3.11 only): "
            "pip install yuface==2023.5.1, or use crop.detector: blazeface"
        ) from None

    scale = min(1.0, max_side / max(im.size))
    small = im if scale == 1.0 else im.resize((round(im.width * scale), round(im.height * scale)), Image.BILINEAR)
    bgr = np.ascontiguousarray(np.asarray(small)[:, :, ::-1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # yuface warns about >960 px; we downscale ourselves
        confs, boxes, _ = yuface.detect(bgr, conf=min_score)
    out = []
    for c, (x, y, w, h) in zip(confs, boxes):
        x, y, w, h = (float(v) / scale for v in (x, y, w, h))
        if min(w, h) >= min_size:
            out.append(Box(x, y, w, h, float(c) / 100.0))
    return sorted(out, key=lambda b: -b.w * b.h)


def square_crop(im: Image.Image, box: Box, margin: float, size: int) -> tuple[Image.Image, float]:
    """Square crop centred on the box, enlarged by `margin` on each side, resized to `size`.

    Parts outside the image are padded with edge-mean grey. Returns the crop and the
    box side as a fraction of the crop side (so a consumer can find the tight face again).
    Enlarging uses bicubic interpolation: INTER_AREA-style enlarging loses accuracy on
    small faces (see docs/architecture.md).
    """
    side = max(box.w, box.h)
    full = side * (1 + 2 * margin)
    cx, cy = box.x + box.w / 2, box.y + box.h / 2
    left, top = cx - full / 2, cy - full / 2
    region = (round(left), round(top), round(left + full), round(top + full))
    crop = im.crop(region)  # PIL pads outside with black
    crop = crop.resize((size, size), Image.BICUBIC)
    return crop, side / full


def encode_crop(im: Image.Image) -> bytes:
    """JPEG at quality 95: a tenth of PNG's size, so 50,000 crops stay a few hundred MB."""
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=95)
    return buf.getvalue()
