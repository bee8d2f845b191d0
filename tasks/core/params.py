"""`params.yaml`, read once into frozen, typed sections.

The rest of the code receives these objects, never dicts or config paths. Sections that
shape the data are listed under `params:` in `dvc.yaml`; `runtime` only changes speed and
is never a DVC param, so tuning it never invalidates a dataset.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tasks.core import backends
from tasks.core.yamlio import load_yaml


class Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()[:16]


class Paths(Section):
    input: str = Field(description="folder of images, or any fsspec URL of one")
    manifest: str = Field("", description="CSV/Parquet manifest with `path` and optional prior labels")
    review: str = Field(
        "data/review/labels.csv",
        description="labels people gave in review (`seke review import`), merged over the manifest's by `path`",
    )
    ingest: str = "data/ingest"
    crop: str = "data/crop"
    prompt: str = "data/prompt"
    sample: str = "data/sample_runs"
    verify: str = "data/verify"
    feid: str = "data/feid"
    inbox: str = Field(
        "data/inbox",
        description="images the incremental flow brought in (manifest.csv + images/, DVC-tracked); "
        "ingest reads it next to `input`; empty = none",
    )
    metrics: str = "metrics"
    plots: str = "plots"


class Ingest(Section):
    source: str = Field("unknown", description="`source` for rows whose manifest does not name one")
    max_bytes: int = Field(20_000_000, gt=0)
    extensions: list[str] = [".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"]
    label_set: list[str] = Field(default_factory=list, description="expression classes the prior labels come from")
    au_set: list[str] = Field(default_factory=list, description="AUs the prior labels cover")


class Crop(Section):
    detector: Literal["blazeface", "yuface", "none"] = "blazeface"
    min_score: float = Field(0.5, ge=0, le=1)
    min_size: int = Field(24, ge=1)
    max_side: int = Field(960, ge=64)
    margin: float = Field(0.3, ge=0, le=1)
    crop_size: int = Field(256, ge=32)
    faces: Literal["all", "largest"] = "all"
    max_error_rate: float = Field(0.5, ge=0, le=1)


class Prompt(Section):
    version: str = "seke-v1"
    knowledge: bool = True
    blind: bool = True


class LocalAnnotator(Section):
    classifiers: list[Literal["fer", "facex"]] = ["fer", "facex"]
    tta: bool = True


class Annotator(Section):
    backend: Annotated[str, AfterValidator(backends.check)] = Field("local", description="tasks/core/backends.py")
    model: str = "local-ensemble-v1"
    temperature: float = Field(1.0, ge=0)
    local: LocalAnnotator = LocalAnnotator()
    # openai backend (endpoint and key come only from the environment, never from here)
    max_n: int = Field(8, ge=1, description="at most this many samples (`n`) per request")
    image_detail: Literal["auto", "low", "high"] = "auto"
    max_output_tokens: int = Field(0, ge=0, description="max_completion_tokens per answer; 0 = not sent")
    price_in_per_mtok: float = Field(0.0, ge=0, description="USD per million input tokens")
    price_out_per_mtok: float = Field(0.0, ge=0, description="USD per million output tokens")
    budget_usd: float = Field(0.0, ge=0, description="stop the run before spending more; 0 = no limit")
    mode: Literal["online", "batch"] = Field(
        "online", description="batch: each round as OpenAI Batch jobs (/v1/files + /v1/batches); same answers"
    )
    batch_discount: float = Field(0.5, gt=0, le=1, description="batch price / online price (OpenAI, Azure: 0.5)")


class Sample(Section):
    """Adaptive Monte Carlo sampling (SV-UAMC's sampling half) and the verification round.

    Every threshold that decides how many samples a face gets lives here, not in `verify`,
    so that changing a `verify.*` threshold re-runs only verify and export.
    """

    k0: int = Field(2, ge=1)
    dk: int = Field(1, ge=1)
    kmax: int = Field(5, ge=1, description="k0 == kmax gives fixed-K sampling (ablation)")
    retry_failed: int = Field(
        2,
        ge=0,
        description="extra sample indices per request that replace failed or unparseable answers (each a new "
        "seed, cached like any other): a failure never counts towards kmax; 0 = failures use up kmax",
    )
    seed: int = 1234
    blind_k: int = Field(2, ge=1, description="samples per blind request (self-verification against priors)")
    stop_rule: Literal["evidence", "lead", "bayes", "naive"] = Field(
        "lead",
        description="evidence: the evidence model's posterior of the best label reaches stop_posterior "
        "(tasks/method/posterior.py); lead: the top answer leads the runner-up by stop_lead votes; "
        "bayes: Beta-posterior sequential test on the top answer (tasks/method/uamc.py); naive: the stop_* "
        "thresholds below on vote share, entropy, VA std, AU entropy",
    )
    stop_min_samples: int = Field(2, ge=1)
    stop_posterior: float = Field(
        0.97,
        ge=0,
        le=1,
        description="evidence: stop once the knowledge-prior evidence model gives the best label this probability",
    )
    stop_lead: int = Field(
        3,
        ge=1,
        description="lead: stop once the top answer leads the runner-up by this many "
        "votes, or can no longer reach that lead within kmax",
    )
    stop_confidence: float = Field(
        0.93, ge=0, le=1, description="bayes: stop once P(top answer is the face's majority answer | votes) >= this"
    )
    stop_futility: float = Field(
        0.0,
        ge=0,
        le=1,
        description="bayes: also stop (hopeless) once that probability "
        "is below this after stop_futility_after samples; 0 = never",
    )
    stop_futility_after: int = Field(5, ge=1)
    stop_min_consistency: float = Field(
        0.0,
        ge=0,
        le=1,
        description="knowledge: the top answer must also fit the sampled AUs/VA this well to stop early; 0 = not used",
    )
    stop_vote_share: float = Field(0.8, ge=0, le=1)
    stop_max_entropy: float = Field(1.0, ge=0)
    stop_max_va_std: float = Field(0.25, ge=0)
    stop_max_au_entropy: float = Field(0.6, ge=0, le=1)
    verify_round: Literal["none", "uncertain", "leaders", "all"] = Field(
        "uncertain",
        description="the verification round: the annotator sees its aggregated answer and the "
        "relevant knowledge and confirms or corrects it; none | uncertain (faces whose evidence "
        "posterior is below verify_below) | leaders (faces whose top answer reached stop_lead) | all faces",
    )
    verify_below: float = Field(
        0.998, ge=0, le=1, description="uncertain: ask faces whose evidence posterior (stopping.best_posterior) < this"
    )
    max_error_rate: float = Field(0.2, ge=0, le=1)

    @model_validator(mode="after")
    def _k(self) -> "Sample":
        if self.kmax < self.k0:
            raise ValueError(f"sample.kmax ({self.kmax}) must be >= sample.k0 ({self.k0})")
        return self


class Verify(Section):
    """Acceptance, per granularity. A generated expression is accepted when its calibrated
    confidence reaches the threshold that `target_error` selects (or `min_confidence` when
    target_error is 0) and no hard gate withholds it; see `tasks.method.trust` and `tasks.method.evidence`."""

    target_error: float = Field(
        0.05,
        ge=0,
        lt=1,
        description="error rate allowed among accepted generated "
        "expressions, guaranteed with probability 1 - delta; 0 = use min_confidence",
    )
    delta: float = Field(0.1, gt=0, lt=1)
    guarantee: Literal["pac", "fdr"] = Field(
        "pac",
        description="pac: error among accepted <= target_error with probability >= 1 - delta (Learn-then-Test, "
        "Clopper-Pearson); fdr: expected error among accepted <= target_error (conformal selection with "
        "Benjamini-Hochberg, Jin & Candes 2023). Both are reported; this one is applied",
    )
    guarantee_mode: Literal["auto", "required"] = Field(
        "auto",
        description="auto: certify target_error when the labelled faces allow it, else accept by min_confidence "
        "and say everywhere that there is no guarantee; required: a run that cannot certify stops (before the "
        "first paid call when that is known from the count of labelled faces)",
    )
    self_calibrate: bool = Field(True, description="fit the confidence model on this run's labelled faces")
    min_calibration_faces: int = Field(100, ge=2, description="fewer labelled faces: fall back to `calibration`")
    calibration_folds: int = Field(5, ge=2)
    calibration_seed: int = 0
    trust_from: str = Field(
        "",
        description="trust.json of an earlier run (same annotator, model, prompt) used when "
        "this run has too few labelled faces",
    )
    per_granularity: bool = Field(True, description="false: any withheld granularity rejects the whole face")
    min_vote_share: float = Field(0.0, ge=0, le=1, description="hard floor on the top answer's vote share")
    max_entropy: float = Field(3.0, ge=0, description="hard ceiling on the vote entropy (bits)")
    max_va_std: float = Field(0.35, ge=0)
    max_au_entropy: float = Field(
        0.92, ge=0, le=1, description="an AU whose occurrence rate has a higher binary entropy (bits) is withheld"
    )
    min_prior_agreement: float = Field(0.5, ge=0, le=1)
    min_consistency: float = Field(0.25, ge=0, le=1)
    min_confidence: float = Field(0.5, ge=0, le=1)
    use_consistency: bool = True
    use_priors: bool = True
    use_verification: bool = Field(True, description="use the verification round's answers (if sampled)")
    require_confirmation: bool = Field(
        False,
        description="reject every generated expression the verification "
        "round did not confirm (faces it did not ask are not affected)",
    )
    calibration: str = Field(
        "",
        description="JSON file mapping evidence features to a calibrated confidence "
        "(written by benchmarks/quality_study.py); empty = the built-in uncalibrated prior",
    )
    au_threshold: float = Field(0.5, gt=0, lt=1)
    evidence_model: bool = Field(
        True,
        description="fit the evidence model (tasks/method/posterior.py) on the calibration faces: the "
        "label and its confidence come from every signal the answers carry, not the votes alone",
    )
    evidence_signals: list[Literal["aus", "va", "verification", "second_opinion"]] = Field(
        default_factory=lambda: ["aus", "va", "verification", "second_opinion"],
        description="what the evidence model reads besides the stated labels (ablation: drop one)",
    )


class Export(Section):
    min_rows: int = Field(1, ge=0)
    instructions: str = Field("v1", description="instruction bank: a name in tasks/instructions/, or a path")
    multi_turn: float = Field(0.5, ge=0, le=1, description="share of rows with a multi-turn conversation")
    task_mix: dict[str, float] = Field(
        default_factory=lambda: {"classification": 1.0, "va": 1.0, "au": 1.0, "description": 1.0, "chain": 0.5},
        description="weights of the task types (single-turn draw, and which lead a multi-turn row); 0 = never",
    )
    seed: int = 0

    @field_validator("task_mix")
    @classmethod
    def _known_tasks(cls, v: dict[str, float]) -> dict[str, float]:
        from tasks.core.instructions import TASKS

        bad = sorted(set(v) - set(TASKS))
        if bad or any(w < 0 for w in v.values()) or not any(v.values()):
            raise ValueError(f"task_mix: tasks are {', '.join(TASKS)} with weights >= 0, not all 0 (got {v})")
        return v


class Expectations(Section):
    max_class_share: float = Field(0.95, gt=0, le=1)
    min_classes: int = Field(1, ge=0)
    min_faces_for_distribution: int = Field(
        30, ge=0, description="check the label distribution only when FEID has at least this many rows"
    )


class Runtime(Section):
    cache: str = ".seke/cache"
    concurrency: int = Field(8, ge=1)
    batch_size: int = Field(64, ge=1)
    timeout_s: float = Field(60, gt=0)
    max_retries: int = Field(4, ge=0)
    requests_per_minute: int = Field(0, ge=0)
    tokens_per_minute: int = Field(0, ge=0)
    retry_base_s: float = Field(1.0, gt=0, description="first backoff delay; doubles per retry, with jitter")
    batch_poll_s: float = Field(30.0, gt=0, description="annotator.mode batch: how often a batch's status is read")
    batch_max_requests: int = Field(50_000, ge=1, description="annotator.mode batch: requests per batch at most")
    batch_max_mb: float = Field(190.0, gt=0, description="annotator.mode batch: JSONL size per batch at most")
    retry_max_s: float = Field(60.0, gt=0, description="cap on one backoff delay (Retry-After included)")
    max_consecutive_failures: int = Field(
        20, ge=0, description="stop the run after this many failed calls in a row; 0 = never"
    )
    progress_every_s: float = Field(
        5.0, gt=0, description="off a terminal, a progress line (and the Prefect progress artifact) at most this often"
    )
    task_runner: Literal["sequential", "dask"] = Field(
        "sequential", description="where crop/sample(/verify) batches run: in this process, or on Dask (prefect-dask)"
    )
    dask_address: str = Field(
        "",
        description="scheduler of an existing Dask cluster (tcp://host:8786); "
        "empty = start a local multi-process `distributed` cluster",
    )
    dask_workers: int = Field(0, ge=0, description="workers of the local cluster; 0 = one per CPU core")
    dask_in_flight: int = Field(
        0, ge=0, description="batches submitted ahead of the one being written; 0 = 2 per worker (bounds memory)"
    )


class BenchSource(Section):
    """One labelled source for the FEAB benchmark split (read in place, never copied)."""

    name: str = Field(description="source name; subjects are namespaced as <name>_<subject>")
    labels: str = Field(description="CSV with one row per image; its `path` column is relative to `root`")
    root: str = Field("", description="folder the paths are relative to; default: the CSV's folder")
    path_column: str = "path"
    label_column: str = Field(
        "label", description="expression column (the source's own names; mapped by the alias table)"
    )
    label_scheme: str = ""
    subject_column: str = Field("", description="person id column; empty = use subject_regex or one subject per image")
    subject_regex: str = Field("", description="regex on the file name whose group 1 is the person (e.g. LFW names)")
    label_set: list[str] = Field(default_factory=list, description="expression classes of this source ([] = all 8)")
    au_set: list[str] = Field(default_factory=list, description="AUs this source annotates (AUxx columns)")
    licence: str = ""
    citation: str = ""


class Bench(Section):
    """FEAB (benchmark) and annotation-quality settings. Not a data-shaping section of FEID."""

    sources: list[BenchSource] = Field(default_factory=list)
    split: str = Field("bench/split.csv", description="the split manifest `seke split` writes")
    dev_fraction: float = Field(0.2, ge=0, lt=1, description="share of subjects in `dev`; the rest are `test`")
    seed: int = 0
    eval_split: Literal["dev", "test", "all"] = "test"
    limit: int = Field(0, ge=0, description="at most this many images per source (0 = all); a fixed subset")
    bootstrap: int = Field(1000, ge=0, description="bootstrap resamples for the confidence intervals (0 = none)")
    ci: float = Field(0.95, gt=0, lt=1)
    metrics: str = "metrics/feab.json"
    plots: str = "plots/feab"
    report: str = "reports/feab.md"
    work: str = Field(".seke/bench", description="per-run predictions (Parquet) for re-use and inspection")


class Incremental(Section):
    """The watch flow (flows/incremental.py). Not a DVC param: it never shapes a row."""

    input: str = Field("", description="folder or fsspec URL (s3://bucket/prefix) to watch; empty = paths.input")
    manifest: str = Field("", description="manifest of the watched location (prior labels); empty = list the folder")
    record: bool = Field(True, description="dvc push to the default remote after building a new version")
    lock_wait_s: float = Field(
        0.0,
        ge=0,
        description="a run that finds another holding the project waits this long, then steps aside with one "
        "line (every entry point; tasks/infra/projectlock.py)",
    )
    git_commit: bool = Field(
        False, description="also git-commit the new version (dvc.lock, the inbox manifest and .dvc file, metrics)"
    )


class Deploy(Section):
    """Prefect deployments (flows/deploy.py, prefect.yaml). Not a DVC param."""

    name: str = "feid-incremental"
    cron: str = Field("", description="cron schedule, e.g. '0 * * * *'; empty = use interval_s")
    interval_s: int = Field(3600, ge=0, description="interval schedule in seconds when cron is empty; 0 = no schedule")
    input: str = Field("", description="deployment parameter: location to watch; empty = incremental.input")
    budget_usd: float = Field(
        0.0, ge=0, description="deployment parameter: spend cap per run; 0 = annotator.budget_usd"
    )


class Params(Section):
    paths: Paths
    ingest: Ingest = Ingest()
    crop: Crop = Crop()
    prompt: Prompt = Prompt()
    annotator: Annotator = Annotator()
    sample: Sample = Sample()
    verify: Verify = Verify()
    export: Export = Export()
    expectations: Expectations = Expectations()
    runtime: Runtime = Runtime()
    bench: Bench = Bench()
    incremental: Incremental = Incremental()
    deploy: Deploy = Deploy()

    def data_digest(self) -> str:
        """Hash of everything that shapes the data (all sections but `paths`, `runtime` and
        the operational `bench`, `incremental`, `deploy`; of `annotator`, not how the
        requests are sent and paid for: `mode`, `batch_discount`, `budget_usd`)."""
        d = self.model_dump(
            mode="json",
            exclude={
                "paths": True,
                "runtime": True,
                "bench": True,
                "incremental": True,
                "deploy": True,
                "annotator": {"mode", "batch_discount", "budget_usd"},
            },
        )
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


class ParamsError(ValueError):
    """params.yaml (or an override) is missing or invalid; the message names the key."""


def parse_overrides(overrides: list[str] | None) -> dict:
    """`["sample.kmax=9", "verify.delta=0.2"]` -> `{"sample": {"kmax": 9}, "verify": {"delta": 0.2}}`
    (values read as YAML: numbers, booleans, lists; anything else stays a string)."""
    out: dict = {}
    for o in overrides or []:
        key, eq, val = o.partition("=")
        if not eq or not key.strip():
            raise ParamsError(f"-S {o!r}: expected section.key=value")
        parts = key.strip().split(".")
        cur = out
        for part in parts[:-1]:
            cur = cur.setdefault(part, {})
            if not isinstance(cur, dict):
                raise ParamsError(f"-S {o!r}: {part} is not a section")
        cur[parts[-1]] = load_yaml(val) if val != "" else ""
    return out


def _merge(d: dict, over: dict) -> dict:
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(d.get(k), dict):
            _merge(d[k], v)
        elif isinstance(v, dict) and k in d:
            raise ParamsError(f"-S {k}: {k} is not a section")
        else:
            d[k] = v
    return d


def load(path: str | Path = "params.yaml", overrides: list[str] | None = None) -> Params:
    """The one params loader: read `params.yaml`, apply `-S section.key=value` overrides,
    validate. Errors name the offending key."""
    p = Path(path)
    if not p.exists():
        raise ParamsError(f"{p} not found: run from the project root or pass --params")
    d = _merge(load_yaml(p.read_text()) or {}, parse_overrides(overrides))
    try:
        return Params.model_validate(d)
    except ValidationError as ex:
        errs = "; ".join(f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in ex.errors())
        raise ParamsError(f"invalid params ({p}{' with -S overrides' if overrides else ''}): {errs}") from None
