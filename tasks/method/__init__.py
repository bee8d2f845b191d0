"""SV-UAMC itself: adaptive sampling, evidence, stopping rules, per-granularity decisions,
calibration and the error guarantee."""
