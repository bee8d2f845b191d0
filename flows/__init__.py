"""Prefect orchestration: one flow per stage (`flows.stages`), the whole pipeline
(`flows.pipeline`), and the `seke` command line (`flows.cli`)."""
