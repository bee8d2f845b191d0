"""The local annotator's models and the features it derives from them: the classifiers' test-time
augmentation passes, MediaPipe blendshapes mapped to AUs, VA derived from expression and AUs,
and the verification answer from the dissenting classifier and AU support. Model files come
from pip packages, pinned by SHA-256 (`tasks.infra.models`).
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import threading
from dataclasses import dataclass
from importlib import metadata

import numpy as np
from PIL import Image

from tasks.core.knowledge import AUS, EXPRESSIONS, load
from tasks.infra import models

VERSION = "1.1.0"  # 1.1: answers verification requests


MARGIN = 0.3  # crop.margin the crop stage uses by default


FACE_FRAC = 1.0 / (1.0 + 2 * MARGIN)


CONTEXT = 1.1  # classifier input = detector box x CONTEXT


TTA = {"shift": 0.08, "scale": 0.08, "flip": 0.5, "brightness": 0.15}


FACEX_FLATTEN = 3.0  # facex probabilities -> p^(1/3), renormalised


VA_NUDGE = 0.25  # how far full AU evidence moves valence/arousal


VERIFY_AU_WEIGHT = 0.5  # verification: weight of the AU support vs. the dissenting classifier


# class order of each model's output, in project labels
CLASSIFIERS = {
    "fer": {"size": 64, "channels": 1, "classes": ("anger", "disgust", "fear", "happy", "sad", "surprise", "neutral")},
    "facex": {
        "size": 200,
        "channels": 3,
        "classes": ("anger", "disgust", "fear", "happy", "neutral", "sad", "surprise"),
    },
}


# --- blendshapes -> AUs --------------------------------------------------------------------
# Each AU: a list of (feature, threshold). A feature is a blendshape name; "X*" is the mean
# of XLeft and XRight (for mouthRoll: of Lower and Upper); "smileSquint" and "lipGap" are
# derived (see `features`). The AU's
# intensity is 0.5 * max(feature / threshold) clipped to [0, 1]: 0.5 exactly at threshold,
# 1 at twice the threshold. Active when intensity >= 0.5.
AU_TABLE: dict[str, tuple[tuple[str, float], ...]] = {
    "AU01": (("browInnerUp", 0.45),),
    "AU02": (("browOuterUp*", 0.40),),
    "AU04": (("browDown*", 0.50),),
    "AU05": (("eyeWide*", 0.04),),  # weak: eyeWide stays tiny
    "AU06": (("cheekSquint*", 0.30), ("smileSquint", 0.08)),  # cheekSquint is ~0: proxy
    "AU07": (("eyeSquint*", 0.55),),
    "AU09": (("noseSneer*", 0.20),),  # dead output: never reported
    "AU10": (("mouthUpperUp*", 0.03),),
    "AU12": (("mouthSmile*", 0.20),),
    "AU14": (("mouthDimple*", 0.06),),
    "AU15": (("mouthFrown*", 0.05),),
    "AU17": (("mouthShrugLower", 0.40),),
    "AU20": (("mouthStretch*", 0.10),),
    "AU23": (("mouthRoll*", 0.20),),  # stand-in: no lip-tightener shape
    "AU24": (("mouthPress*", 0.20),),
    "AU25": (("lipGap", 0.02), ("jawOpen", 0.15), ("mouthLowerDown*", 0.15)),
    "AU26": (("jawOpen", 0.15),),
}


WEAK_AUS = ("AU05", "AU09", "AU14", "AU17", "AU23", "AU24")


# How far the verification answer trusts each AU (see the module docstring): 1 = clear signal
# on the labelled sets, 0.5 = a proxy or a weaker signal, 0.2 = weak, 0 = never fires.
AU_RELIABILITY: dict[str, float] = {
    "AU01": 1.0,
    "AU02": 1.0,
    "AU04": 1.0,
    "AU12": 1.0,
    "AU25": 1.0,
    "AU26": 1.0,
    "AU06": 0.5,
    "AU07": 0.5,
    "AU10": 0.5,
    "AU15": 0.5,
    "AU20": 0.5,
    "AU05": 0.2,
    "AU14": 0.2,
    "AU17": 0.2,
    "AU23": 0.2,
    "AU24": 0.2,
    "AU09": 0.0,
}


# mediapipe face-mesh landmarks used for the lip gap (inner lips) and the face height
_LIP_UP, _LIP_DOWN, _FOREHEAD, _CHIN = 13, 14, 10, 152


def features(blendshapes: dict[str, float], lip_gap: float | None = None) -> dict[str, float]:
    """Blendshape scores plus the derived features `AU_TABLE` names."""
    f = dict(blendshapes)
    for name in list(blendshapes):  # XLeft/XRight, and mouthRollLower/mouthRollUpper
        for a, b in (("Left", "Right"), ("Lower", "Upper")):
            if name.endswith(a) and name[: -len(a)] + b in blendshapes:
                f[name[: -len(a)] + "*"] = (blendshapes[name] + blendshapes[name[: -len(a)] + b]) / 2
    f["smileSquint"] = f.get("eyeSquint*", 0.0) * f.get("mouthSmile*", 0.0)
    if lip_gap is not None:
        f["lipGap"] = lip_gap
    return f


def au_intensities(blendshapes: dict[str, float], lip_gap: float | None = None) -> dict[str, float]:
    """The 17 AUs' intensities in [0, 1] (0.5 = at threshold) from one face's blendshapes."""
    f = features(blendshapes, lip_gap)
    out = {}
    for au, sources in AU_TABLE.items():
        r = max((f.get(name, 0.0) / thr for name, thr in sources), default=0.0)
        out[au] = float(min(max(0.5 * r, 0.0), 1.0))
    return out


def active_aus(intensity: dict[str, float]) -> list[str]:
    return [a for a in AUS if intensity.get(a, 0.0) >= 0.5]


# --- expression and VA -----------------------------------------------------------------------
def to_project(probs: np.ndarray, classes: tuple[str, ...]) -> np.ndarray:
    """(n, 7) model probabilities -> (n, 8) in `EXPRESSIONS` order; contempt gets 0."""
    out = np.zeros((probs.shape[0], len(EXPRESSIONS)), dtype=np.float64)
    for j, c in enumerate(classes):
        out[:, EXPRESSIONS.index(c)] = probs[:, j]
    return out / np.clip(out.sum(axis=1, keepdims=True), 1e-12, None)


def flatten(p: np.ndarray, power: float) -> np.ndarray:
    q = np.power(np.clip(p, 0.0, None), 1.0 / power)
    return q / np.clip(q.sum(axis=-1, keepdims=True), 1e-12, None)


def draw(p: np.ndarray, temperature: float, rng: np.random.Generator) -> int:
    """Index drawn from p^(1/T) renormalised; T == 0 is argmax."""
    if temperature <= 0:
        return int(np.argmax(p))
    q = flatten(p, temperature)
    return int(rng.choice(len(q), p=q))


def derive_va(p: np.ndarray, intensity: dict[str, float] | None) -> tuple[float, float]:
    """Expected VA under the expression distribution, nudged along the AU directions."""
    k = load()
    v = float(sum(p[i] * k.centroids[e]["valence"] for i, e in enumerate(EXPRESSIONS)))
    a = float(sum(p[i] * k.centroids[e]["arousal"] for i, e in enumerate(EXPRESSIONS)))
    if intensity:

        def evidence(group: str) -> float:  # 0 at threshold, 1 at saturation
            return max((max(0.0, 2 * intensity.get(au, 0.0) - 1) for au in k.au_directions.get(group, [])), default=0.0)

        v += VA_NUDGE * (evidence("valence_up") - evidence("valence_down"))
        a += VA_NUDGE * (evidence("arousal_up") - evidence("arousal_down"))
    return float(np.clip(v, -1, 1)), float(np.clip(a, -1, 1))


# --- verification -------------------------------------------------------------------------
def au_evidence(intensity: float) -> float:
    """0 at half an AU's threshold (intensity 0.25), 1 at the threshold (0.5) and above."""
    return float(min(1.0, max(0.0, (2 * intensity - 0.5) / 0.5)))


def au_support(expression: str, intensity: dict[str, float] | None) -> float | None:
    """How far the blendshape AUs back `expression`, in [0, 1]; None without AUs or when the
    prototype has no AU this annotator can see (disgust: AU09 is dead, AU15 half-reliable)."""
    if intensity is None:
        return None
    core, _ = load().prototype(expression)
    if not core:  # neutral: no reliable AU active
        return 1.0 - max(au_evidence(intensity[a]) for a, w in AU_RELIABILITY.items() if w >= 1.0)
    w = [AU_RELIABILITY[a] for a in core]
    if sum(w) <= 0:
        return None
    return sum(AU_RELIABILITY[a] * au_evidence(intensity[a]) for a in core) / sum(w)


def verify_scores(
    proposed: str, per_classifier: dict[str, np.ndarray], intensity: dict[str, float] | None
) -> tuple[str, dict[str, float]]:
    """(the dissenting classifier, score per label) of one verification answer; see the
    module docstring. `per_classifier`: each classifier's (8,) probabilities, un-augmented."""
    j = EXPRESSIONS.index(proposed)
    dissent = min(per_classifier, key=lambda c: (per_classifier[c][j], c))
    p = per_classifier[dissent]
    scores = {}
    for i, e in enumerate(EXPRESSIONS):
        if e == "contempt" and e != proposed:  # neither classifier knows it
            continue
        a = au_support(e, intensity)
        scores[e] = float(p[i] if a is None else VERIFY_AU_WEIGHT * a + (1 - VERIFY_AU_WEIGHT) * p[i])
    return dissent, scores


def proposed_of(messages: list[dict]) -> dict:
    """The proposed answer of a verification request: the JSON after the last
    'Proposed answer:' in its text parts (`tasks.method.verification.verification_text`)."""
    texts = []
    for m in messages or []:
        c = m.get("content")
        if isinstance(c, str):
            texts.append(c)
        elif isinstance(c, list):
            texts += [p.get("text", "") for p in c if isinstance(p, dict) and p.get("type") == "text"]
    text = "\n".join(texts)
    i = text.rfind("Proposed answer:")
    if i < 0:
        raise ValueError("verify: the request has no 'Proposed answer:' to check")
    obj, _ = json.JSONDecoder().raw_decode(text[i + len("Proposed answer:") :].strip())
    expr = load().expression(obj.get("expression", ""))
    return {**obj, "expression": expr}


# --- models, loaded lazily once per process ----------------------------------------------------
class _Models:
    lock = threading.RLock()
    _interpreters: dict[str, object] = {}
    _landmarker = None

    @classmethod
    def interpreter(cls, name: str):
        if name not in cls._interpreters:
            from ai_edge_litert.interpreter import Interpreter

            it = Interpreter(model_path=str(models.path(name)), num_threads=1)
            it.allocate_tensors()
            cls._interpreters[name] = it
        return cls._interpreters[name]

    @classmethod
    def landmarker(cls):
        if cls._landmarker is None:
            os.environ.setdefault("GLOG_minloglevel", "2")
            from mediapipe.tasks.python import BaseOptions, vision

            opts = vision.FaceLandmarkerOptions(
                base_options=BaseOptions(model_asset_path=str(models.path("face_landmarker"))),
                running_mode=vision.RunningMode.IMAGE,
                num_faces=1,
                output_face_blendshapes=True,
            )
            cls._landmarker = vision.FaceLandmarker.create_from_options(opts)
            # close before mediapipe's own executor shuts down (threading's exit hooks run
            # before atexit's, newest first), else its __del__ prints a traceback at exit
            register = getattr(threading, "_register_atexit", atexit.register)
            try:
                register(cls._close)
            except RuntimeError:  # interpreter already shutting down
                pass
        return cls._landmarker

    @classmethod
    def _close(cls):  # pragma: no cover - interpreter shutdown
        if cls._landmarker is not None:
            try:
                cls._landmarker.close()
            except Exception:
                pass
            cls._landmarker = None


def _classify(name: str, x: np.ndarray) -> np.ndarray:
    it = _Models.interpreter(name)
    inp = it.get_input_details()[0]
    if tuple(inp["shape"]) != x.shape:
        it.resize_tensor_input(inp["index"], list(x.shape))
        it.allocate_tensors()
        inp = it.get_input_details()[0]
    it.set_tensor(inp["index"], np.ascontiguousarray(x, dtype=np.float32))
    it.invoke()
    return np.array(it.get_tensor(it.get_output_details()[0]["index"]), dtype=np.float64)


@dataclass
class _Pass:
    shift: tuple[float, float] = (0.0, 0.0)  # fraction of the face side
    scale: float = 1.0
    flip: bool = False
    brightness: float = 1.0

    def describe(self) -> str:
        if self == _Pass():
            return "no augmentation"
        return (
            f"shift {self.shift[0]:+.0%}/{self.shift[1]:+.0%}, scale {self.scale:.2f}"
            f"{', flipped' if self.flip else ''}, brightness x{self.brightness:.2f}"
        )


def _draw_pass(rng: np.random.Generator, tta: bool) -> _Pass:
    if not tta:
        return _Pass()
    s, c = TTA["shift"], TTA["scale"]
    return _Pass(
        shift=(float(rng.uniform(-s, s)), float(rng.uniform(-s, s))),
        scale=float(rng.uniform(1 - c, 1 + c)),
        flip=bool(rng.random() < TTA["flip"]),
        brightness=float(rng.uniform(1 - TTA["brightness"], 1 + TTA["brightness"])),
    )


def _views(
    im: Image.Image, ps: _Pass, sizes: dict[str, int], face_frac: float = FACE_FRAC
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The classifier inputs (grey, float in [0, 255]) and the RGB view for MediaPipe."""
    W, H = im.size
    side = face_frac * min(W, H)
    cx = W / 2 + ps.shift[0] * side
    cy = H / 2 + ps.shift[1] * side
    # MediaPipe: the whole crop, moved and scaled like the face box
    full = min(W, H) * ps.scale
    view = (
        im.transform(
            (W, H),
            Image.Transform.EXTENT,
            (cx - full / 2, cy - full / 2, cx + full / 2, cy + full / 2),
            resample=Image.Resampling.BILINEAR,
        )
        if ps != _Pass()
        else im
    )
    grey = im.convert("L")
    h = side * CONTEXT * ps.scale / 2
    box = (max(0.0, cx - h), max(0.0, cy - h), min(float(W), cx + h), min(float(H), cy + h))
    inputs = {}
    for name, size in sizes.items():
        a = np.asarray(grey.resize((size, size), Image.Resampling.BILINEAR, box=box), dtype=np.float32)
        if ps.flip:
            a = a[:, ::-1]
        inputs[name] = np.clip(a * ps.brightness, 0, 255)
    rgb = np.asarray(view, dtype=np.float32)
    if ps.flip:
        rgb = rgb[:, ::-1]
    rgb = np.clip(rgb * ps.brightness, 0, 255).astype(np.uint8)
    return inputs, np.ascontiguousarray(rgb)


def _blendshapes(rgb: np.ndarray) -> tuple[dict[str, float], float] | None:
    import mediapipe as mp

    r = _Models.landmarker().detect(mp.Image(image_format=mp.ImageFormat.SRGB, data=rgb))
    if not r.face_blendshapes:
        return None
    bs = {c.category_name: float(c.score) for c in r.face_blendshapes[0]}
    L = r.face_landmarks[0]
    height = float(np.hypot(L[_FOREHEAD].x - L[_CHIN].x, L[_FOREHEAD].y - L[_CHIN].y))
    gap = float(np.hypot(L[_LIP_UP].x - L[_LIP_DOWN].x, L[_LIP_UP].y - L[_LIP_DOWN].y)) / max(height, 1e-6)
    return bs, gap


def _sha(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def _pkg_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


assert set(AU_RELIABILITY) == set(AUS)
assert tuple(AU_TABLE) == AUS, "AU_TABLE must cover the project's 17 AUs in order"
