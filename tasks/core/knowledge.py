"""Emotion knowledge: label spaces, aliases, AU catalogue, prototypes and VA regions.

All of it is data in `tasks/knowledge/*.yaml` (a DVC dependency of the stages that use it);
this module only loads it and answers questions about it.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from tasks.core.yamlio import load_yaml

KNOWLEDGE_DIR = Path(__file__).parents[1] / "knowledge"  # data, beside the code packages
PROJECT_DIR = "knowledge"  # a project's own versions of any of those files (`seke init` creates it)


def knowledge_file(name: str) -> Path:
    """The project's `knowledge/<name>` (relative to the working directory, the project root
    under `dvc repro`) if it has one, else the package's."""
    own = Path.cwd() / PROJECT_DIR / name
    return own if own.is_file() else KNOWLEDGE_DIR / name


class UnknownLabel(ValueError):
    """A label name that the alias table cannot map."""


@dataclass(frozen=True)
class Knowledge:
    expressions: tuple[str, ...]
    aus: tuple[str, ...]
    aliases: dict[str, str]  # lower-case alias -> project label
    schemes: dict[str, dict[str, str]]
    au_catalogue: dict[str, dict[str, str]]
    prototypes: dict[str, dict[str, list[str]]]
    centroids: dict[str, dict[str, float]]
    au_directions: dict[str, list[str]]
    digest: str  # hash of the knowledge files, recorded in provenance

    # -- labels -------------------------------------------------------------
    def expression(self, name: object, scheme: str | None = None) -> str:
        """Map a source's label name (or number, with `scheme`) to the project's label."""
        key = str(name).strip().lower()
        if scheme:
            table = self.schemes.get(scheme.lower())
            if table is None:
                raise UnknownLabel(f"unknown label scheme {scheme!r}; known: {sorted(self.schemes)}")
            key = key.split(".")[0]
            if key not in table:
                raise UnknownLabel(f"label {name!r} is not in scheme {scheme!r}")
            return table[key]
        if key in self.aliases:
            return self.aliases[key]
        raise UnknownLabel(f"label {name!r} is not in the alias table (tasks/knowledge/labels.yaml)")

    def au_code(self, name: object) -> str:
        """`AU12`, `au12`, `12`, `AU12_r` -> `AU12`; raises for codes outside the 17."""
        s = str(name).strip().upper().removeprefix("AU").split("_")[0]
        if not s.isdigit():
            raise UnknownLabel(f"not an AU code: {name!r}")
        code = f"AU{int(s):02d}"
        if code not in self.aus:
            raise UnknownLabel(f"{code} is not one of the 17 AUs")
        return code

    # -- knowledge ------------------------------------------------------------
    def prototype(self, expression: str) -> tuple[list[str], list[str]]:
        p = self.prototypes[expression]
        return list(p["core"]), list(p["often"])

    def va_centroid(self, expression: str) -> tuple[float, float, float]:
        c = self.centroids[expression]
        return c["valence"], c["arousal"], c["spread"]

    def consistency(
        self,
        expression: str,
        au_rates: dict[str, float] | None,
        valence: float | None,
        arousal: float | None,
        au_weights: dict[str, float] | None = None,
    ) -> float | None:
        """How well expression, AUs and VA tell the same story, in [0, 1].

        AU part: weighted mean over the prototype's core AUs of their occurrence rate, and for
        neutral, one minus the mean rate of all AUs. `au_weights` lets a caller down-weight AUs
        its annotator detects poorly. VA part: exp(-d^2 / 2 s^2) for the distance d to the
        expression's centroid with spread s. Returns the mean of the parts that exist, or None.
        """
        parts: list[float] = []
        if au_rates:
            core, _ = self.prototype(expression)
            w = au_weights or {}
            if core:
                known = [a for a in core if a in au_rates]
                if known:
                    ws = [w.get(a, 1.0) for a in known]
                    if sum(ws) > 0:
                        parts.append(sum(au_rates[a] * wi for a, wi in zip(known, ws)) / sum(ws))
            else:
                parts.append(1.0 - sum(au_rates.values()) / max(len(au_rates), 1))
        if valence is not None and arousal is not None:
            cv, ca, s = self.va_centroid(expression)
            d2 = (valence - cv) ** 2 + (arousal - ca) ** 2
            parts.append(math.exp(-d2 / (2 * s * s)))
        return sum(parts) / len(parts) if parts else None


def _load_yaml(name: str) -> dict:
    return load_yaml(knowledge_file(name).read_text())


@lru_cache(maxsize=1)
def load() -> Knowledge:
    labels = _load_yaml("labels.yaml")
    cat = _load_yaml("au_catalogue.yaml")
    proto = _load_yaml("prototypes.yaml")
    va = _load_yaml("va.yaml")
    aliases: dict[str, str] = {}
    for label, names in labels["aliases"].items():
        for n in [label, *names]:
            key = str(n).lower()
            if key in aliases and aliases[key] != label:
                raise ValueError(f"alias {n!r} maps to both {aliases[key]} and {label}")
            aliases[key] = label
    digest = hashlib.sha256()
    for name in sorted(f.name for f in KNOWLEDGE_DIR.glob("*.yaml")):
        digest.update(name.encode() + knowledge_file(name).read_bytes())
    return Knowledge(
        expressions=tuple(labels["expressions"]),
        aus=tuple(labels["aus"]),
        aliases=aliases,
        schemes={k: {str(i): v for i, v in t.items()} for k, t in labels["schemes"].items()},
        au_catalogue=cat["aus"],
        prototypes=proto["prototypes"],
        centroids=va["centroids"],
        au_directions=va["au_directions"],
        digest=digest.hexdigest()[:16],
    )


EXPRESSIONS: tuple[str, ...] = tuple(_load_yaml("labels.yaml")["expressions"])
AUS: tuple[str, ...] = tuple(_load_yaml("labels.yaml")["aus"])
