"""`python -m flows.summary`: a short account of the last build, from the stages' metrics."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tasks.core.params import load, stage_names


def main() -> int:
    p = load(sys.argv[1] if len(sys.argv) > 1 else "params.yaml")
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
        f"{s.get('calls')} calls, {s.get('cache_hits')} cache hits, ${s.get('cost_usd', 0):.4f})"
    )
    print(f"  per class {e.get('per_class', {})}")
    print(f"  kept of accepted faces: {v.get('status_of_accepted', {})}")
    print(f"  rejection reasons {v.get('reasons', {})}; withheld parts {v.get('withheld', {})}")
    cal = v.get("calibration") or {}
    if cal:
        print(f"  trust: confidence from {cal.get('source')} ({cal.get('why')})")
        th = cal.get("threshold")
        if cal.get("mode") == "target_error":
            print(
                f"  trust: target error {cal['target_error']} with probability {1 - cal['delta']:.2f}: "
                + (
                    f"threshold {th:.4f}, bound {cal['bound']:.4f}, expected coverage {cal['expected_coverage']:.0%}"
                    if th is not None
                    else "NOT MET, no generated expression accepted"
                )
            )
        else:
            print(f"  trust: plain threshold verify.min_confidence={th} (no error guarantee)")
    print(
        "  all stages passed their Great Expectations suites"
        if all(x.get("validation", {}).get("success") for x in m.values())
        else "  VALIDATION FAILED somewhere"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
