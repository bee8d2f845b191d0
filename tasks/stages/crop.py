"""crop: find every face and store a square crop of each, inside Parquet.

Input: ImageRecord. Output: one FaceRecord per face (box, detector score, JPEG crop bytes,
the image's priors carried along) and one CropStatus per image (ok / no_face / decode_error).
`crop.detector: none` treats the whole image as one pre-aligned face.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections import Counter
from typing import Callable, Iterator

from expectations.frames import Light
from tasks.core.params import Crop, Params
from tasks.core.records import CropStatus, FaceRecord, ImageRecord
from tasks.infra import dask, io
from tasks.infra.detect import Box, decode, detect_faces, encode_crop, square_crop
from tasks.infra.progress import track
from tasks.stages.base import log, validate, write_metrics

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
    "label_origin",
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
        boxes = detect_faces(
            im,
            min_score=params.min_score,
            min_size=params.min_size,
            max_side=params.max_side,
            detector=params.detector,
        )
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


@dask.batch_task("crop")
def crop_batch(rows: list[dict], crop_params: Crop) -> list[tuple[dict, list[dict]]]:
    def read(uri: str) -> bytes:
        fs, path = io.fs_path(uri)
        return fs.cat_file(path)

    return [
        (st.model_dump(), [f.model_dump() for f in faces])
        for st, faces in crop_all((ImageRecord(**r) for r in rows), read, crop_params)
    ]


def run(p: Params) -> dict:
    """The crop stage: batches of images go through `crop_batch`, in this process or on Dask
    (`runtime.task_runner`); results are written in input order either way."""
    src = io.join(p.paths.ingest, "images.parquet")
    out = io.join(p.paths.crop, "faces.parquet"), io.join(p.paths.crop, "images.parquet")
    faces_light, statuses = Light(FaceRecord), Light(CropStatus)
    status_n, multi = Counter(), 0
    n_images = io.count_rows(src)
    t0 = time.perf_counter()
    runner = dask.task_runner(p)
    with runner or contextlib.nullcontext(), io.writers((out[0], FaceRecord), (out[1], CropStatus)) as (wf, ws):
        batches = ((b, p.crop) for b in io.iter_batches(src, batch_size=p.runtime.batch_size))
        results = (x for res in dask.mapped(runner, "crop", batches, dask.in_flight(p)) for x in res)
        for st, faces in track(results, "crop", n_images, "images", p.runtime.progress_every_s):
            ws.write(st)
            statuses.add(st)
            status_n[st["status"]] += 1
            multi += st["n_faces"] > 1
            for f in faces:
                wf.write(f)
                faces_light.add(f)
        errors = status_n["decode_error"]
        if n_images and errors / n_images > p.crop.max_error_rate:
            raise RuntimeError(f"crop: {errors}/{n_images} images failed to decode (> crop.max_error_rate)")
        val = validate("crop", {"faces": faces_light.frame(), "images": statuses.frame()}, p, {"images": n_images})
        wf.commit(), ws.commit()
    dt = time.perf_counter() - t0
    m = {
        "images": n_images,
        "faces": faces_light.n,
        "status": dict(status_n),
        "multi_face_images": multi,
        "validation": val,
        "images_per_s": round(n_images / dt, 2) if dt else None,
    }
    write_metrics(p, "crop", m)
    log().info(f"crop: {faces_light.n} faces in {n_images} images; {m['status']}")
    return m
