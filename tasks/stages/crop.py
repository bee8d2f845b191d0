"""crop: find every face and store a square crop of each, inside Parquet.

Input: ImageRecord. Output: one FaceRecord per face (box, detector score, JPEG crop bytes,
the image's priors carried along) and one CropStatus per image (ok / no_face / decode_error).
`crop.detector: none` treats the whole image as one pre-aligned face.
"""

from __future__ import annotations

import hashlib
from typing import Callable, Iterator

from tasks.core.params import Crop
from tasks.core.records import CropStatus, FaceRecord, ImageRecord
from tasks.infra.detect import Box, decode, detect_faces, encode_crop, square_crop

CARRIED = (
    "path",
    "source",
    "subject",
    "prior_expression",
    "prior_valence",
    "prior_arousal",
    "prior_aus",
    "label_set",
    "au_set",
)


def crop_image(img: ImageRecord, data: bytes, params: Crop) -> tuple[CropStatus, list[FaceRecord]]:
    try:
        im = decode(data)
    except Exception as ex:  # ingest decoded it once; a changed file is the likely cause
        return CropStatus(
            image_id=img.id, path=img.path, status="decode_error", n_faces=0, detail=f"{type(ex).__name__}: {ex}"
        ), []
    if params.detector == "none":
        boxes = [Box(0.0, 0.0, float(im.width), float(im.height), 1.0)]
        margin = 0.0
    else:
        boxes = detect_faces(im, min_score=params.min_score, min_size=params.min_size, max_side=params.max_side)
        margin = params.margin
        if params.faces == "largest":
            boxes = boxes[:1]
    if not boxes:
        return CropStatus(
            image_id=img.id,
            path=img.path,
            status="no_face",
            n_faces=0,
            detail=f"no face with score >= {params.min_score} and side >= {params.min_size}px",
        ), []
    faces = []
    for i, b in enumerate(boxes):
        c, frac = square_crop(im, b, margin, params.crop_size)
        jpg = encode_crop(c)
        faces.append(
            FaceRecord(
                face_id=f"{img.id}_{i}",
                image_id=img.id,
                face_index=i,
                n_faces=len(boxes),
                box_x=b.x,
                box_y=b.y,
                box_w=b.w,
                box_h=b.h,
                score=b.score,
                detector=params.detector,
                crop=jpg,
                crop_sha256=hashlib.sha256(jpg).hexdigest(),
                crop_face_frac=frac,
                **{k: getattr(img, k) for k in CARRIED},
            )
        )
    return CropStatus(image_id=img.id, path=img.path, status="ok", n_faces=len(faces)), faces


def crop_all(
    images: Iterator[ImageRecord], read: Callable[[str], bytes], params: Crop
) -> Iterator[tuple[CropStatus, list[FaceRecord]]]:
    for img in images:
        try:
            data = read(img.uri)
        except OSError as ex:
            yield (
                CropStatus(
                    image_id=img.id, path=img.path, status="decode_error", n_faces=0, detail=f"unreadable: {ex}"
                ),
                [],
            )
            continue
        yield crop_image(img, data, params)
