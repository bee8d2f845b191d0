"""The AU and VA part of the evidence model (`tasks.method.posterior`): what each answer's AUs and
VA leak of the face.

The face has its own AUs and VA (AU u present with probability `phi[y, u]`, VA around
`mu[y]` with spread `tau`). Every answer, right or wrong, reports each AU either from the label
it states (with probability `lam`; then on with `theta[s, u]`) or from the face (its own AU,
misread with probability `eps`); its VA is `beta * mu[s] + (1 - beta) * v` plus noise `sig`,
v being the face's own VA. The face's AUs are summed out per AU and its VA integrated in
closed form, so answers that leak the same face count as one face, not as independent clues.

The functions work on the answers of many faces at once (`pad` stacks `FaceEvidence`) and
read the parameters from an `EvidenceModel` (`m`); `fit_aus` and `fit_va` set them from
calibration faces whose expression is known.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tasks.core.knowledge import AUS

_KAPPA = 5.0  # pseudo-answers (theta, mu) and pseudo-faces (phi) with which the knowledge priors shrink
_SD_FLOOR = 0.05


def pad(evs: list[Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The faces' answers stacked: AUs (F, n, 17), VA (F, n, 2), stated labels (F, n); a face
    with fewer than n answers is padded with missing values (label 0, never read)."""
    n = max([len(ev.stated) for ev in evs] + [1])
    A = np.full((len(evs), n, len(AUS)), np.nan)
    V = np.full((len(evs), n, 2), np.nan)
    S = np.zeros((len(evs), n), int)
    for f, ev in enumerate(evs):
        j = len(ev.stated)
        A[f, :j], V[f, :j], S[f, :j] = ev.aus, ev.va, ev.stated
    return A, V, S


def _au_pieces(m: Any, A: np.ndarray, S: np.ndarray):
    """Per answer and AU: is it observed, its value, its likelihood if it follows the stated
    label, and if it reports a face whose AU is absent / present."""
    obs = ~np.isnan(A)
    a = np.nan_to_num(A) > 0.5
    ts = m.theta[S]  # (F, n, U)
    bs = np.where(a, ts, 1 - ts)
    b1 = np.where(a, 1 - m.eps, m.eps)
    return obs, a, bs, 1 - b1, b1


def _au_given_face(m: Any, pieces) -> tuple[np.ndarray, np.ndarray]:
    """log P(a face's answers for AU u | the face's AU u absent / present): (F, U) each, from
    `_au_pieces`."""
    obs, _, bs, b0, b1 = pieces
    l0 = np.where(obs, np.log(m.lam * bs + (1 - m.lam) * b0), 0.0).sum(axis=1)
    l1 = np.where(obs, np.log(m.lam * bs + (1 - m.lam) * b1), 0.0).sum(axis=1)
    return l0, l1


def au_terms(m: Any, A: np.ndarray, S: np.ndarray) -> np.ndarray:
    """(F, C) log-likelihood of each face's answers' AUs under each true expression y: per AU,
    the face's own AU summed out (present with probability phi[y, u])."""
    l0, l1 = _au_given_face(m, _au_pieces(m, A, S))
    top = np.maximum(l0, l1)[:, None, :]
    e0, e1 = np.exp(l0[:, None, :] - top), np.exp(l1[:, None, :] - top)
    return (top + np.log(m.phi[None] * e1 + (1 - m.phi[None]) * e0)).sum(axis=2)


def va_terms(
    m: Any, V: np.ndarray, S: np.ndarray, beta=None, tau=None, sig=None, dims: tuple[int, ...] = (0, 1)
) -> np.ndarray:
    """(F, C) log-likelihood of each face's answers' VA under each true expression y. Answer i
    is beta * mu[s_i] + (1 - beta) * v + noise (sd sig), with the face's own VA v around mu[y]
    (sd tau): given y, the residuals are Gaussian with covariance sig^2 I + c 11^T, c =
    (1 - beta)^2 tau^2, whose likelihood has a closed form."""
    beta = m.beta if beta is None else beta
    tau = m.tau if tau is None else tau
    sig = m.sig if sig is None else sig
    obs = ~np.isnan(V).any(axis=2)  # (F, n)
    n = obs.sum(axis=1)[:, None]  # (F, 1)
    out = np.zeros((len(V), len(m.labels)))
    for d in dims:
        base = np.nan_to_num(V[..., d]) - beta[d] * m.mu[S, d]  # (F, n)
        r = np.where(obs[..., None], base[..., None] - (1 - beta[d]) * m.mu[None, None, :, d], 0.0)  # (F, n, C)
        c, s2 = (1 - beta[d]) ** 2 * tau[d] ** 2, sig[d] ** 2
        q = (r**2).sum(axis=1) / s2 - c * r.sum(axis=1) ** 2 / (s2 * (s2 + n * c))
        out += -0.5 * q - 0.5 * np.log1p(n * c / s2) - n * np.log(sig[d])
    return out


def fit_aus(m: Any, A: np.ndarray, S: np.ndarray, truth: np.ndarray, iters: int = 30) -> None:
    """theta, phi, lam and eps by EM over each face's own AUs (latent, per AU) and which of
    its answers' AUs follow the stated label (latent); theta and phi shrunk to the prototypes."""
    obs = ~np.isnan(A)
    if not obs.any():
        return
    prior = m.theta.copy()
    for _ in range(iters):
        pieces = _au_pieces(m, A, S)
        obs, a, bs, b0, b1 = pieces
        l0, l1 = _au_given_face(m, pieces)
        ph = m.phi[truth]  # (F, U)
        top = np.maximum(l0, l1)
        w1 = ph * np.exp(l1 - top)
        w1 = (w1 / (w1 + (1 - ph) * np.exp(l0 - top)))[:, None, :]  # P(the face has u)
        z0 = m.lam * bs / (m.lam * bs + (1 - m.lam) * b0)  # P(follows the label | face lacks u)
        z1 = m.lam * bs / (m.lam * bs + (1 - m.lam) * b1)
        z = np.where(obs, w1 * z1 + (1 - w1) * z0, 0.0)
        # lam from wrong answers only: in a right answer the label and the face are the same
        # expression, so both stories fit it. One rate for all AUs: an AU that is rare under every
        # label says nothing about it, and a rate of its own would stay wherever it started
        wrong = (S != truth[:, None])[..., None] & obs
        m.lam = np.full(len(AUS), np.clip((z[wrong].sum() + 1.0) / (wrong.sum() + 2.0), 0.01, 0.99))
        for c in range(len(m.labels)):
            sel = (S == c)[..., None] & obs
            zc = np.where(sel, z, 0.0)
            m.theta[c] = np.clip(
                ((zc * a).sum(axis=(0, 1)) + _KAPPA * prior[c]) / (zc.sum(axis=(0, 1)) + _KAPPA), 0.01, 0.99
            )
            fy = truth == c
            m.phi[c] = np.clip((w1[fy, 0].sum(axis=0) + _KAPPA * prior[c]) / (fy.sum() + _KAPPA), 0.01, 0.99)
        face = np.where(obs, w1 * (1 - z1), 0.0), np.where(obs, (1 - w1) * (1 - z0), 0.0)
        misread = (face[0] * ~a).sum() + (face[1] * a).sum()  # reports of the face that disagree with it
        m.eps = float(np.clip((misread + 1.0) / (face[0].sum() + face[1].sum() + 20.0), 0.005, 0.3))


def fit_va(m: Any, V: np.ndarray, S: np.ndarray, truth: np.ndarray) -> None:
    """mu from the answers that state the face's expression (shrunk to the centroids); beta,
    tau and sig by maximum likelihood at the known expressions."""
    from scipy.optimize import minimize

    ok = ~np.isnan(V).any(axis=2)
    right = ok & (S == truth[:, None])
    for c in range(len(m.labels)):
        sel = right & (S == c)
        m.mu[c] = (V[sel].sum(axis=0) + _KAPPA * m.mu[c]) / (sel.sum() + _KAPPA)
    if ok.sum() < 10:
        return
    keep = ok.any(axis=1)
    V, S, truth = V[keep], S[keep], truth[keep]
    idx = np.arange(len(truth))

    for d in (0, 1):  # valence and arousal apart: the likelihood is a sum over the two

        def nll(x: np.ndarray, d: int = d) -> float:
            b, t, sg = m.beta.copy(), m.tau.copy(), m.sig.copy()
            b[d], t[d], sg[d] = 1 / (1 + np.exp(-x[0])), np.exp(x[1]), max(np.exp(x[2]), _SD_FLOOR)
            return -float(va_terms(m, V, S, b, t, sg, (d,))[idx, truth].sum())

        b0 = float(np.clip(m.beta[d], 0.01, 0.99))
        x0 = np.array([np.log(b0 / (1 - b0)), np.log(m.tau[d]), np.log(m.sig[d])])
        x = minimize(nll, x0, method="Nelder-Mead", options={"maxiter": 300, "xatol": 1e-3, "fatol": 1e-3}).x
        m.beta[d], m.tau[d], m.sig[d] = 1 / (1 + np.exp(-x[0])), np.exp(x[1]), max(np.exp(x[2]), _SD_FLOOR)
