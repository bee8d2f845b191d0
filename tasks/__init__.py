"""SEKE: knowledge-enhanced, self-verified facial-emotion instruction data (FEID).

`tasks` is the domain: records, parameters, knowledge, annotators and one module per
stage. Stage functions take records and return records; reading and writing happen at
the edges (`tasks.infra.io`) and orchestration lives in `flows/`.
"""

__version__ = "0.1.0"
