"""crop: real detector on real images; one row per face; no-face images recorded."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from PIL import Image

from tasks.core.params import Crop
from tasks.core.records import ImageRecord
from tasks.infra.detect import decode
from tasks.stages.crop import crop_image

SAMPLE = Path(__file__).resolve().parents[2] / "data" / "sample" / "images"


def _img(name: str) -> tuple[ImageRecord, bytes]:
    data = (SAMPLE / name).read_bytes()
    im = decode(data)
    return ImageRecord(
        id=hashlib.sha256(data).hexdigest(),
        path=name,
        uri=str(SAMPLE / name),
        source="t",
        width=im.width,
        height=im.height,
        format="JPEG",
        n_bytes=len(data),
        label_set=[],
        au_set=[],
    ), data


def test_every_face_of_a_group_photo_becomes_a_row():
    img, data = _img("demo_multi_face_london_collage_CCBY.jpg")  # four London faces side by side
    st, faces = crop_image(img, data, Crop())
    assert st.status == "ok" and st.n_faces == len(faces) == 4
    assert [f.face_index for f in faces] == [0, 1, 2, 3]
    assert len({f.face_id for f in faces}) == 4 and all(f.face_id.startswith(img.id) for f in faces)
    assert sorted(round(f.box_x / 345) for f in faces) == [0, 1, 2, 3], "one face per quarter of the collage"
    for f in faces:
        crop = decode(f.crop)
        assert crop.size == (256, 256)
        assert f.crop_sha256 == hashlib.sha256(f.crop).hexdigest()
        assert 0 < f.score <= 1 and 0 < f.crop_face_frac < 1


def test_largest_only():
    img, data = _img("demo_multi_face_london_collage_CCBY.jpg")
    _, faces = crop_image(img, data, Crop(faces="largest"))
    assert len(faces) == 1


@pytest.mark.parametrize("name", ["demo_no_face_coffee_skimage_CC0.png", "demo_no_face_rocket_skimage_PD.jpg"])
def test_no_face_is_recorded(name):
    img, data = _img(name)
    st, faces = crop_image(img, data, Crop())
    assert (st.status, st.n_faces, faces) == ("no_face", 0, [])
    assert "no face" in st.detail


def test_detector_none_treats_the_whole_image_as_one_face():
    img, data = _img("demo_no_face_coffee_skimage_CC0.png")
    st, (face,) = crop_image(img, data, Crop(detector="none", crop_size=64))
    assert st.status == "ok" and (face.box_w, face.box_h) == (img.width, img.height) and face.score == 1.0
    assert Image.open(__import__("io").BytesIO(face.crop)).size == (64, 64)


def test_priors_are_carried_to_faces():
    img, data = _img("london_happy_002_08.jpg")
    img = img.model_copy(update={"prior_expression": "happy", "label_set": ["neutral", "happy"]})
    _, (face,) = crop_image(img, data, Crop())
    assert face.prior_expression == "happy" and face.label_set == ["neutral", "happy"]


def test_corrupt_bytes_become_a_decode_error_row():
    img, data = _img("london_happy_002_08.jpg")
    st, faces = crop_image(img, data[:500], Crop())
    assert st.status == "decode_error" and faces == [] and st.detail
