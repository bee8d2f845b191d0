"""Storage: every input and output location is an fsspec URL (a local path, `s3://bucket/key`, ...).

Credentials and endpoints come only from the environment, never from params.yaml:

- s3fs (through botocore) reads the standard AWS variables itself: `AWS_ACCESS_KEY_ID`,
  `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_DEFAULT_REGION`/`AWS_REGION`,
  `AWS_PROFILE`, and `AWS_ENDPOINT_URL` / `AWS_ENDPOINT_URL_S3` for an S3-compatible server
  (MinIO, Ceph, moto). So `tasks.infra.io` needs no options: `fsspec.core.url_to_fs(url)` just works.
- Clients that do *not* read those variables get explicit options from here:
  `polars_options()` for polars' native reader.
- The DVC remote keeps its own config (`dvc remote modify <r> endpointurl ...`, secrets with
  `--local` so they land in the git-ignored `.dvc/config.local`); `dvc_remote_commands()`
  spells those commands out for a given environment.
"""

from __future__ import annotations

import os
from typing import Mapping

import fsspec

ENV_KEYS = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_PROFILE",
)


def protocol(url: str) -> str:
    """`s3` for s3://..., `file` for a local path."""
    return url.split("://", 1)[0] if "://" in url else "file"


def is_local(url: str) -> bool:
    return protocol(url) in ("file", "local")


def endpoint_url(env: Mapping[str, str] | None = None) -> str | None:
    env = os.environ if env is None else env
    return env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None


def region(env: Mapping[str, str] | None = None) -> str | None:
    env = os.environ if env is None else env
    return env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or None


def s3_options(env: Mapping[str, str] | None = None) -> dict:
    """`storage_options` for s3fs from the standard AWS variables (for callers that want them
    explicit; s3fs would find the same values on its own)."""
    env = os.environ if env is None else env
    opts: dict = {}
    if env.get("AWS_ACCESS_KEY_ID"):
        opts["key"] = env["AWS_ACCESS_KEY_ID"]
        opts["secret"] = env.get("AWS_SECRET_ACCESS_KEY")
        if env.get("AWS_SESSION_TOKEN"):
            opts["token"] = env["AWS_SESSION_TOKEN"]
    elif env.get("AWS_PROFILE"):
        opts["profile"] = env["AWS_PROFILE"]
    ck = {}
    if endpoint_url(env):
        ck["endpoint_url"] = endpoint_url(env)
    if region(env):
        ck["region_name"] = region(env)
    if ck:
        opts["client_kwargs"] = ck
    return opts


def storage_options(url: str, env: Mapping[str, str] | None = None) -> dict:
    """fsspec `storage_options` for `url` (empty for local paths)."""
    return s3_options(env) if protocol(url) in ("s3", "s3a") else {}


def filesystem(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, path) for `url`, with the options above."""
    return fsspec.core.url_to_fs(url, **storage_options(url))


def polars_options(env: Mapping[str, str] | None = None) -> dict:
    """`storage_options` for polars' native (object_store) S3 reader."""
    env = os.environ if env is None else env
    o = {}
    for src, dst in (
        ("AWS_ACCESS_KEY_ID", "aws_access_key_id"),
        ("AWS_SECRET_ACCESS_KEY", "aws_secret_access_key"),
        ("AWS_SESSION_TOKEN", "aws_session_token"),
    ):
        if env.get(src):
            o[dst] = env[src]
    if region(env):
        o["aws_region"] = region(env)
    ep = endpoint_url(env)
    if ep:
        o["aws_endpoint_url"] = ep
        if ep.startswith("http://"):
            o["aws_allow_http"] = "true"
    return o


def dvc_remote_commands(
    name: str, url: str, env: Mapping[str, str] | None = None, default: bool = True
) -> list[list[str]]:
    """The `dvc remote` commands that configure an S3 remote for this environment. The
    endpoint goes into the project's `.dvc/config` (not secret); credentials, if any are set,
    go into `.dvc/config.local` (git-ignored). With no credentials in the environment, DVC
    falls back to the same AWS variables and profiles as s3fs."""
    env = os.environ if env is None else env
    cmds = [["remote", "add", "--force"] + (["-d"] if default else []) + [name, url]]
    ep = endpoint_url(env)
    if ep:
        cmds.append(["remote", "modify", name, "endpointurl", ep])
    if region(env):
        cmds.append(["remote", "modify", name, "region", region(env)])
    if env.get("AWS_ACCESS_KEY_ID"):
        cmds.append(["remote", "modify", "--local", name, "access_key_id", env["AWS_ACCESS_KEY_ID"]])
        cmds.append(["remote", "modify", "--local", name, "secret_access_key", env.get("AWS_SECRET_ACCESS_KEY", "")])
    return cmds
