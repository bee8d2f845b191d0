"""The evidence model: a posterior over each face's true expression from everything its answers carry.

Why: a VLLM rationalises. When it states a wrong label, most of its AUs and its VA follow
that label, but not all of them: some AUs and part of the VA still come from the face. So an
answer's AUs and VA, read against the prototype of the label *that answer states*, tell
which expression is really there (only the true expression can have put a smile's AUs into
an answer that says "neutral"). The vote share alone cannot see this, and neither can the
consistency of the top label with the *mean* AUs, which mostly repeat the votes.

The model (a latent-class model in the spirit of Dawid and Skene, 1979), for one face with
true expression y:

- Each answer states y with the face's accuracy a (a latent per-face value on a grid, its
  distribution `pi` learned), else a wrong label: the face's own distractor d (a latent
  per-face label, `D[y, d]` learned) with probability `rho`, else any other label.
  Systematic errors are thus modelled, not assumed away: a face whose wrong answers repeat
  one label is explained by a distractor, not by a second true expression.
- The face has its own true AUs and VA: AU u present with probability `phi[y, u]`, VA
  drawn around `mu[y]` with spread `tau`. Every answer, right or wrong, reports each AU
  either from its stated label (with probability `lam`, one rate for all AUs; then u is on
  with probability `theta[s, u]`, a rationalising model: `lam` near 1) or from the face (then it reports the
  face's own AU, flipped with probability `eps`). Its VA is `beta * mu[s] + (1 - beta) * v`
  plus noise `sig`, with v the face's own VA. Because the face's AUs and VA are one latent
  value shared by all its answers, the model knows that five answers leaking the same smile
  are one face's smile, not five independent pieces of evidence; the face's latent AUs are
  summed out per AU and its VA integrated in closed form (an equicorrelated Gaussian).
- The verification round: the annotator confirms a proposal that is y with `conf[0]`, the
  face's distractor with `conf[1]`, another wrong label with `conf[2]`; a refusal's
  correction is one more answer that is not the proposal.
- The local models' label on the crop (the second opinion, which never sees the VLLM's
  answer): a confusion matrix `S[y, l]`.

Every parameter is learned from the run's calibration faces (their known labels make y
observed; the distractor and the accuracy stay latent, so `pi`, `D`, `rho` and the confirm
rates are fitted by EM). The knowledge files give the starting values and the priors that
shrink small counts: the prototype's core and frequent AUs, the VA centroids. Nothing comes
from the simulator. The model falls back by itself: when the AUs and VA of wrong answers
follow the stated label completely, `lam` and `beta` are fitted near 1 and the AU/VA terms
no longer differ between expressions, so the posterior ranks by votes and verification
alone.

The posterior is not trusted as a probability: answers are not independent given the
face in every way the model assumes. Its log-odds is the input of the run's Platt
calibration (`tasks.method.trust`), and the error guarantee holds whatever the model gets
wrong, because it is certified on held-out calibration faces.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from tasks.core.knowledge import AUS, Knowledge
from tasks.method import leakage

SIGNALS = ("aus", "va", "verification", "second_opinion")
GRID = np.linspace(0.05, 0.95, 10)  # the per-face accuracy a
_EPS = 1e-9
_NOT_GENERATED = ("blind", "verify", "verify_blind")
_STATE = ("log_prior", "pi", "D", "theta", "phi", "lam", "mu", "beta", "tau", "sig", "conf", "S")


@dataclass
class FaceEvidence:
    """What one face's answers carry: stated labels, AUs and VA per answer, the verification
    round (the proposal shown and each verdict: confirmed, or the correction's label index or
    -1), and the local models' label (-1: none)."""

    stated: np.ndarray  # (n,) label indices
    aus: np.ndarray  # (n, 17): 1/0, nan where not asked or not answered
    va: np.ndarray  # (n, 2): nan where missing
    proposal: int = -1
    verdicts: list[tuple[bool, int]] = field(default_factory=list)
    second: int = -1


@dataclass
class VoteStats:
    """What the vote part of the model reads of many faces at once: label counts, the
    verification round's proposal (-1: none), its confirmations, refusals, and refusals'
    corrections counted by label."""

    cnt: np.ndarray  # (F, C)
    n: np.ndarray  # (F,)
    proposal: np.ndarray  # (F,)
    n_ok: np.ndarray  # (F,)
    n_ref: np.ndarray  # (F,)
    corr: np.ndarray  # (F, C)


def vote_stats(evs: list[FaceEvidence], C: int) -> VoteStats:
    F = len(evs)
    cnt, corr = np.zeros((F, C)), np.zeros((F, C))
    prop, n_ok, n_ref = np.full(F, -1), np.zeros(F), np.zeros(F)
    for f, ev in enumerate(evs):
        cnt[f] = np.bincount(ev.stated, minlength=C)
        if ev.proposal >= 0:
            prop[f] = ev.proposal
            for ok, c in ev.verdicts:
                n_ok[f] += ok
                n_ref[f] += not ok
                if not ok and c >= 0:
                    corr[f, c] += 1
    return VoteStats(cnt, cnt.sum(axis=1), prop, n_ok, n_ref, corr)


def face_evidence(
    samples: list[dict],
    labels: tuple[str, ...],
    proposal: str | None,
    au_known: set[str] = frozenset(),
    second: str | None = None,
) -> FaceEvidence:
    """A face's evidence from its generated answers (variants other than blind/verify) and its
    verification answers (variant `verify`). `au_known`: AUs the source annotates (not asked)."""
    idx = {e: i for i, e in enumerate(labels)}
    gen = [
        x for x in samples if x["status"] == "ok" and x["variant"] not in _NOT_GENERATED and x.get("expression") in idx
    ]
    n = len(gen)
    aus = np.full((n, len(AUS)), np.nan)
    va = np.full((n, 2), np.nan)
    for j, x in enumerate(gen):
        if x.get("aus") is not None:
            on = set(x["aus"])
            aus[j] = [np.nan if a in au_known else float(a in on) for a in AUS]
        if x.get("valence") is not None and x.get("arousal") is not None:
            va[j] = (x["valence"], x["arousal"])
    verdicts = []
    if proposal in idx:
        for x in samples:
            if x["status"] == "ok" and x["variant"] == "verify":
                e = x.get("expression")
                verdicts.append((e == proposal, -1 if e == proposal or e not in idx else idx[e]))
    return FaceEvidence(
        np.array([idx[x["expression"]] for x in gen], int),
        aus,
        va,
        idx.get(proposal, -1) if verdicts else -1,
        verdicts,
        idx.get(second, -1) if second else -1,
    )


def _priors(k: Knowledge) -> tuple[np.ndarray, np.ndarray]:
    """Starting AU rates (core 0.85, frequent 0.4, other 0.05) and VA centroids from the knowledge."""
    theta = np.full((len(k.expressions), len(AUS)), 0.05)
    mu = np.zeros((len(k.expressions), 2))
    for i, e in enumerate(k.expressions):
        core, often = k.prototype(e)
        for a in often:
            theta[i, AUS.index(a)] = 0.4
        for a in core:
            theta[i, AUS.index(a)] = 0.85
        cv, ca, _ = k.va_centroid(e)
        mu[i] = (cv, ca)
    return theta, mu


@dataclass
class EvidenceModel:
    labels: tuple[str, ...]
    signals: tuple[str, ...]
    log_prior: np.ndarray  # (C,)
    pi: np.ndarray  # (G,) distribution of the per-face accuracy over GRID
    rho: float  # share of wrong answers that name the face's distractor
    D: np.ndarray  # (C, C) P(distractor d | y), zero diagonal
    theta: np.ndarray  # (C, 17) AU rates of an answer that reports its stated label s
    phi: np.ndarray  # (C, 17) AU rates of the faces of each expression
    lam: np.ndarray  # (17,) P(an answer's AU follows its stated label, not the face); one rate, fitted pooled
    eps: float  # P(an answer that reports the face's AU gets it wrong)
    mu: np.ndarray  # (C, 2) VA centre of each expression
    beta: np.ndarray  # (2,) how far an answer's VA follows its stated label, not the face
    tau: np.ndarray  # (2,) spread of the faces' own VA around mu[y]
    sig: np.ndarray  # (2,) an answer's VA noise
    conf: np.ndarray  # (3,) P(confirm) for a proposal that is y / the distractor / another label
    S: np.ndarray  # (C, C) P(second opinion l | y)
    n_faces: int = 0

    # ---------------------------------------------------------------- posterior
    def _answer_terms(self, ev: FaceEvidence) -> np.ndarray:
        """(C,) log-likelihood of the answers' AUs and VA under each true expression."""
        C = len(self.labels)
        if not len(ev.stated):
            return np.zeros(C)
        A, V, S = ev.aus[None], ev.va[None], ev.stated[None]
        out = np.zeros(C)
        if "aus" in self.signals:
            out += leakage.au_terms(self, A, S)[0]
        if "va" in self.signals:
            out += leakage.va_terms(self, V, S)[0]
        return out

    def _vote_terms(self, vs: "VoteStats") -> np.ndarray:
        """(F, C, C, G) log-likelihood of each face's stated labels and verification round
        under (true y, distractor d, accuracy a)."""
        C = len(self.labels)
        lp_y, lp_d, lp_o = self._answer_probs()  # (G,) each
        cnt = vs.cnt[:, :, None, None]  # (F, C, 1, 1): answers stating y
        kd = vs.cnt[:, None, :, None]  # (F, 1, C, 1): answers stating d
        out = cnt * lp_y + kd * lp_d + (vs.n[:, None, None, None] - cnt - kd) * lp_o
        if "verification" not in self.signals or not (vs.proposal >= 0).any():
            return out
        log_state, log_not = self._state_logs()
        f = np.flatnonzero(vs.proposal >= 0)
        pr, i = vs.proposal[f], np.arange(len(f))
        pc = np.full((len(f), C, C), self.conf[2])
        pc[i, :, pr] = self.conf[1]
        pc[i, pr, :] = self.conf[0]
        pc = pc[..., None]
        out[f] += vs.n_ok[f, None, None, None] * np.log(pc) + vs.n_ref[f, None, None, None] * np.log1p(-pc)
        corr = vs.corr[f]
        out[f] += np.tensordot(corr, log_state, axes=1) - corr.sum(axis=1)[:, None, None, None] * log_not[pr]
        return out

    def _state_logs(self) -> tuple[np.ndarray, np.ndarray]:
        """log P(an answer states c) and log P(it does not), under (y, d, a), for every label c:
        (c, y, d, G) each. They depend on rho alone, so they are kept until it changes."""
        key = ("state_logs", self.rho)
        if getattr(self, "_cached", (None,))[0] != key:
            C = len(self.labels)
            lp_y, lp_d, lp_o = self._answer_probs()
            q = np.broadcast_to(np.exp(lp_o), (C, C, C, len(GRID))).copy()
            for c in range(C):
                q[c, :, c, :] = np.exp(lp_d)
                q[c, c, :, :] = GRID
            self._cached = (key, np.log(np.clip(q, _EPS, 1)), np.log(np.clip(1 - q, _EPS, 1)))
        return self._cached[1], self._cached[2]

    def _answer_probs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """log P(an answer states y), P(states the distractor), P(states one other label), on GRID."""
        C = len(self.labels)
        a = GRID
        lp_y = np.log(a)
        lp_d = np.log((1 - a) * (self.rho + (1 - self.rho) / (C - 1)))
        lp_o = np.log((1 - a) * (1 - self.rho) / (C - 1))
        return lp_y, lp_d, lp_o

    def _latent(self, vs: "VoteStats") -> np.ndarray:
        """(F, C, C, G) log joint of (y, d, a) and each face's votes and verification round."""
        return np.log(self.D + _EPS)[None, :, :, None] + np.log(self.pi)[None, None, None, :] + self._vote_terms(vs)

    def log_posterior(self, ev: FaceEvidence) -> np.ndarray:
        """(C,) log P(y | everything the face's answers carry)."""
        lat = self._latent(vote_stats([ev], len(self.labels)))[0]
        m = lat.max(axis=(1, 2), keepdims=True)
        votes = (m + np.log(np.exp(lat - m).sum(axis=(1, 2), keepdims=True)))[:, 0, 0]
        lp = self.log_prior + votes + self._answer_terms(ev)
        if "second_opinion" in self.signals and ev.second >= 0:
            lp = lp + np.log(self.S[:, ev.second])
        return lp - _logsumexp(lp)

    def posterior(self, ev: FaceEvidence) -> np.ndarray:
        return np.exp(self.log_posterior(ev))

    def to_state(self) -> dict:
        """Every parameter, as trust.json keeps it (`from_state` reads it back)."""
        d = {name: np.asarray(getattr(self, name)).tolist() for name in _STATE}
        d.update(labels=list(self.labels), signals=list(self.signals), rho=self.rho, eps=self.eps, n_faces=self.n_faces)
        return d

    @staticmethod
    def from_state(d: dict) -> "EvidenceModel":
        arrays = {name: np.asarray(d[name], float) for name in _STATE}
        return EvidenceModel(
            labels=tuple(d["labels"]),
            signals=tuple(d["signals"]),
            rho=float(d["rho"]),
            eps=float(d["eps"]),
            n_faces=int(d["n_faces"]),
            **arrays,
        )

    def to_json(self) -> dict:
        """The fitted parameters, as metrics/verify.json reports them."""
        r = lambda x: np.round(np.asarray(x, float), 4).tolist()  # noqa: E731
        return {
            "signals": list(self.signals),
            "calibration_faces": self.n_faces,
            "accuracy_mean": round(float((self.pi * GRID).sum()), 4),
            "distractor_share": round(self.rho, 4),
            "au_follow_stated": dict(zip(AUS, r(self.lam))),
            "au_follow_stated_mean": round(float(self.lam.mean()), 4),
            "au_misread_face": round(float(self.eps), 4),
            "va_follow_stated": r(self.beta),
            "va_face_spread": r(self.tau),
            "va_answer_noise": r(self.sig),
            "confirm_rate_right_distractor_other": r(self.conf),
            "second_opinion_accuracy": round(float(np.mean(np.diag(self.S))), 4),
        }


def _logsumexp(x: np.ndarray) -> float:
    m = float(np.max(x))
    return m + float(np.log(np.exp(x - m).sum()))


def initial(k: Knowledge, signals: tuple[str, ...] = SIGNALS) -> EvidenceModel:
    """The starting model from the knowledge files alone (also the prior of `fit`)."""
    C = len(k.expressions)
    theta, mu = _priors(k)
    D = (1 - np.eye(C)) / (C - 1)
    pi = np.exp(-((GRID - 0.7) ** 2) / (2 * 0.2**2))
    return EvidenceModel(
        labels=tuple(k.expressions),
        signals=tuple(signals),
        log_prior=np.full(C, -np.log(C)),
        pi=pi / pi.sum(),
        rho=0.5,
        D=D,
        theta=theta,
        phi=theta.copy(),
        # a VLLM rationalises: most of an answer's AUs and VA follow its label (fitted per run)
        lam=np.full(len(AUS), 0.75),
        eps=0.05,
        mu=mu,
        beta=np.full(2, 0.75),
        tau=np.full(2, 0.3),
        sig=np.full(2, 0.2),
        conf=np.array([0.8, 0.4, 0.3]),
        S=np.full((C, C), 1 / C) * 0.5 + np.eye(C) * 0.5,
    )


def fit(rows: list[tuple[FaceEvidence, int]], k: Knowledge, signals: tuple[str, ...] = SIGNALS, iters: int = 30):
    """The model fitted on calibration faces: (evidence, index of the known expression)."""
    m = initial(k, signals)
    C = len(m.labels)
    m.n_faces = len(rows)
    if not rows:
        return m
    truth = np.array([y for _, y in rows])
    counts = np.bincount(truth, minlength=C)
    m.log_prior = np.log((counts + 5.0) / (counts.sum() + 5.0 * C))
    A, V, S = leakage.pad([ev for ev, _ in rows])
    leakage.fit_aus(m, A, S, truth)
    leakage.fit_va(m, V, S, truth)
    _fit_votes(m, rows, iters)
    sec = [(ev.second, y) for ev, y in rows if ev.second >= 0]
    if sec:
        S = np.ones((C, C))
        for lab, y in sec:
            S[y, lab] += 1
        m.S = S / S.sum(axis=1, keepdims=True)
    return m


def _fit_votes(m: EvidenceModel, rows: list[tuple[FaceEvidence, int]], iters: int) -> None:
    """EM for the accuracy distribution, the distractors, their share and the confirm rates,
    over all calibration faces at once (in chunks, to bound memory)."""
    C = len(m.labels)
    vs = vote_stats([ev for ev, _ in rows], C)
    y = np.array([t for _, t in rows])
    F = len(y)
    verdicts = vs.n_ok + vs.n_ref
    has_p = vs.proposal >= 0
    wrong_n = float((vs.n - vs.cnt[np.arange(F), y]).sum())
    for _ in range(iters):
        frac_d = m.rho / (m.rho + (1 - m.rho) / (C - 1))  # P(systematic | a wrong answer names d)
        r = np.empty((F, C, len(GRID)))
        for lo in range(0, F, 1024):
            sl = slice(lo, lo + 1024)
            part = _sub(vs, sl)
            lat = m._latent(part)[np.arange(len(part.n)), y[sl]]  # (f, C, G) over (d, a)
            lat[np.arange(len(part.n)), y[sl]] = -np.inf
            e = np.exp(lat - lat.max(axis=(1, 2), keepdims=True))
            r[sl] = e / e.sum(axis=(1, 2), keepdims=True)
        rd = r.sum(axis=2)  # (F, C): P(d | face)
        pi_acc = np.full(len(GRID), 0.5 / len(GRID)) + r.sum(axis=(0, 1))
        D_acc = np.ones((C, C)) - np.eye(C)
        np.add.at(D_acc, y, rd)
        sys_n = float((rd * vs.cnt).sum()) * frac_d
        right = has_p & (vs.proposal == y)
        w_d = np.where(has_p & ~right, rd[np.arange(F), np.maximum(vs.proposal, 0)], 0.0)
        other = has_p & ~right
        conf_n = np.array(
            [1.0 + vs.n_ok[right].sum(), 1.0 + (w_d * vs.n_ok).sum(), 1.0 + ((1 - w_d) * vs.n_ok)[other].sum()]
        )
        conf_d = np.array(
            [2.0 + verdicts[right].sum(), 2.0 + (w_d * verdicts).sum(), 2.0 + ((1 - w_d) * verdicts)[other].sum()]
        )
        m.pi = pi_acc / pi_acc.sum()
        np.fill_diagonal(D_acc, 0.0)
        m.D = D_acc / D_acc.sum(axis=1, keepdims=True)
        m.rho = float(np.clip(sys_n / wrong_n, 0.0, 0.99)) if wrong_n else m.rho
        m.conf = np.clip(conf_n / conf_d, 0.01, 0.99)


def _sub(vs: VoteStats, sl: slice) -> VoteStats:
    return VoteStats(vs.cnt[sl], vs.n[sl], vs.proposal[sl], vs.n_ok[sl], vs.n_ref[sl], vs.corr[sl])
