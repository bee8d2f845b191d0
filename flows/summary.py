"""`python -m flows.summary`: a short account of the last build, from the stages' metrics."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tasks.core.dvcfile import stage_names
from tasks.core.params import load


def guarantee_lines(cal: dict, v: dict) -> list[str]:
    """What backs the generated labels: the guarantee that holds, or plainly none and how to get one."""
    th, n = cal.get("threshold"), v.get("accepted_generated_expressions", 0)
    em = cal.get("evidence_model")
    out = []
    if em:
        used = [s for s in em["signals"] if s != "second_opinion" or (cal.get("second_opinion") or {}).get("used")]
        out.append(
            f"evidence: label and confidence from {', '.join(['votes'] + used)} "
            f"(best guess right {cal.get('evidence_best_guess_accuracy_oof', 0):.0%} on calibration faces, out of fold)"
        )
    if cal.get("guaranteed"):
        kind = cal.get("guarantee")
        what = (
            f"error <= {cal['target_error']} with probability {1 - cal['delta']:.2f} (Learn-then-Test)"
            if kind == "pac"
            else f"expected error <= {cal['target_error']} (conformal selection)"
        )
        out.append(f"guarantee: {n} generated expressions kept, {what}; threshold {th:.4f}")
        return out
    if cal.get("mode") == "target_error" and th is None:
        out.append("guarantee: NONE, and verify.guarantee_mode is required: no generated expression kept")
    else:
        out.append(
            f"guarantee: NONE for the {n} generated expressions kept (accepted by verify.min_confidence={th}, "
            "a calibrated confidence, not certified)"
        )
    if cal.get("mode") == "target_error":
        out.append(f"  why: {cal.get('selection') or cal.get('why')}")
    out.append("  to get one: `seke review export` draws a blind random sample to label; import it and run again")
    if cal.get("label_budget_line"):
        out.append(f"  {cal['label_budget_line']}")
    elif cal.get("label_budget"):
        most = max(b["calibration_faces"] for b in cal["label_budget"])
        out.append(
            f"  even {most} labelled faces would not certify the target at this annotator's accuracy "
            "(estimate): a stronger annotator or a looser verify.target_error would"
        )
    fr = [
        f"{p['coverage']:.0%}: {p['bound']:.1%}" for p in cal.get("frontier") or [] if p["coverage"] in (0.2, 0.5, 0.8)
    ]
    if fr:
        out.append(f"  smallest certifiable error at coverage {', '.join(fr)}")
    return out


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    p = load(args[0] if args else "params.yaml")
    m = {s: json.loads(f.read_text()) for s in stage_names() if (f := Path(p.paths.metrics) / f"{s}.json").exists()}
    if "export" not in m:
        print("no FEID yet: run `dvc repro`")
        return 1
    i, c, s, v, e = (m.get(k, {}) for k in ("ingest", "crop", "sample", "verify", "export"))
    print(
        f"FEID: {e['feid_rows']} accepted faces in {p.paths.feid}/ ({e['rejects']} rejected, "
        f"acceptance {v.get('acceptance_rate', 0):.0%}, mean confidence {e['mean_confidence']:.2f})"
    )
    print(f"  images {i.get('images')} usable, {i.get('quarantined')} quarantined {i.get('quarantine_reasons', {})}")
    print(f"  faces {c.get('faces')}, crop status {c.get('status', {})}")
    print(
        f"  samples {s.get('samples')} ({s.get('samples_per_face')} per face, annotator {s.get('annotator')}, "
        f"{s.get('calls')} calls, {s.get('cache_hits')} cache hits, ${s.get('cost_usd', 0):.4f} this run, "
        f"${s.get('version_cost_usd', 0):.4f} for the version)"
    )
    print(f"  per class {e.get('per_class', {})}")
    print(f"  kept of accepted faces: {v.get('status_of_accepted', {})}")
    print(f"  rejection reasons {v.get('reasons', {})}; withheld parts {v.get('withheld', {})}")
    cal = v.get("calibration") or {}
    if cal:
        print(f"  trust: confidence from {cal.get('source')} ({cal.get('why')})")
        for line in guarantee_lines(cal, v):
            print(f"  {line}")
    print(
        "  all stages passed their Great Expectations suites"
        if all(x.get("validation", {}).get("success") for x in m.values())
        else "  VALIDATION FAILED somewhere"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
