"""Batches of a stage on Dask workers (`runtime.task_runner: dask`), or in this process.

A stage registers its batch function with `batch_task(name)`; `mapped()` then yields the
results of every batch in input order, with at most `in_flight` batches submitted ahead.
"""

from __future__ import annotations

import os
import pickle
from typing import Callable, Iterator

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.core.params import Params

_BATCH_FNS: dict[str, Callable] = {}


def batch_task(name: str) -> Callable:
    """Decorator: a stage's batch function, callable in this process or on a worker."""

    def wrap(fn: Callable) -> Callable:
        t = task(cache_policy=NO_CACHE, persist_result=False, name=f"{name}-batch-fn")(fn)
        _BATCH_FNS[name] = t
        return t

    return wrap


def task_runner(p: Params):
    """Prefect's Dask task runner when `runtime.task_runner: dask` (an existing cluster at
    `runtime.dask_address`, else a local multi-process `distributed` cluster); None = run
    batches in this process."""
    if p.runtime.task_runner != "dask":
        return None
    try:
        from prefect_dask import DaskTaskRunner
    except ImportError:
        raise RuntimeError("runtime.task_runner: dask needs the dask extra: pip install 'seke[dask]'") from None

    if p.runtime.dask_address:
        return DaskTaskRunner(address=p.runtime.dask_address)
    _share_temporary_server()
    n = p.runtime.dask_workers or os.cpu_count() or 1
    return DaskTaskRunner(
        cluster_kwargs={"n_workers": n, "threads_per_worker": 1, "processes": True, "dashboard_address": ":0"}
    )


def _share_temporary_server() -> None:
    """Local cluster workers inherit our environment. With no PREFECT_API_URL configured this
    process talks to a temporary server; without its URL, every worker would start a
    temporary server of its own (measured: ~100 s lost on 2 cores). Point them at ours."""
    from prefect.settings import PREFECT_API_URL

    if os.environ.get("PREFECT_API_URL") or PREFECT_API_URL.value():
        return
    from prefect.server.api.server import SubprocessASGIServer

    for server in SubprocessASGIServer._instances.values():
        if server.running:
            os.environ["PREFECT_API_URL"] = server.api_url
            return


@task(cache_policy=NO_CACHE, persist_result=False, task_run_name="{name}-batch")
def dask_batch(name: str, module: str, payload: bytes) -> bytes:
    """One batch of a stage on a Dask worker. Arguments and result travel as one pickled
    blob: Prefect walks every task parameter looking for futures, which cost ~3 s per batch
    of 1,024 faces passed as dicts, and nothing for one bytes object. `module` is the one
    that registered `name` (the caller's, sent along: this layer names no stage)."""
    if name not in _BATCH_FNS:  # a fresh worker process: import the module that registers it
        import importlib

        importlib.import_module(module)
    return pickle.dumps(_BATCH_FNS[name].fn(*pickle.loads(payload)), protocol=pickle.HIGHEST_PROTOCOL)


def in_flight(p: Params) -> int:
    if p.runtime.dask_in_flight:
        return p.runtime.dask_in_flight
    return 2 * max(1, p.runtime.dask_workers or os.cpu_count() or 1)


def mapped(runner, name: str, args: Iterator[tuple], window_size: int) -> Iterator:
    """Results of the batch function `name` on each `a` of `args`, in order. With a task
    runner, at most `window_size` batches are submitted ahead of the one being consumed
    (memory stays bounded); without one, each is called in turn in this process (still a
    Prefect task run, visible in the UI). Either way the batch travels as one pickled blob
    (`dask_batch`): handed over as dicts, Prefect's walk of the parameters cost ~3 s per batch."""
    module = _BATCH_FNS[name].fn.__module__
    if runner is None:
        for a in args:
            yield pickle.loads(dask_batch(name, module, pickle.dumps(a, protocol=pickle.HIGHEST_PROTOCOL)))
        return
    window: list = []
    for a in args:
        payload = pickle.dumps(a, protocol=pickle.HIGHEST_PROTOCOL)
        window.append(runner.submit(dask_batch, parameters={"name": name, "module": module, "payload": payload}))
        if len(window) > window_size:
            yield pickle.loads(window.pop(0).result())
    for fut in window:
        yield pickle.loads(fut.result())
