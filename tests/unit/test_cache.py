"""The response cache: answers survive a reopen, compaction keeps every answer once and
deletes only what it merged, a crash in the middle of a compaction loses nothing, and the
endpoint's base URL is part of the key."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tasks.core.calls import Call, CallResult, RawAnswer
from tasks.infra.cache import ResponseCache, compact_all


def _call(i: int, n: int = 2) -> CallResult:
    call = Call(
        request_id=f"r{i}",
        face_id=f"f{i}",
        messages=[],
        schema={},
        ask=("expression",),
        image=b"",
        indices=tuple(range(n)),
        seeds=(7,) * n,
    )
    answers = [RawAnswer(index=j, seed=7, text=json.dumps({"i": i, "j": j}), finish_reason="stop") for j in range(n)]
    return CallResult(call=call, answers=answers, tokens_in=10.0, tokens_out=4.0, cost_usd=0.02)


def _texts(c: ResponseCache, n: int) -> list:
    return [(c.get(f"r{i}", j, 7) or {}).get("text") for i in range(n) for j in range(2)]


def _files(d) -> list[str]:
    return sorted(os.listdir(d))


def test_compaction_keeps_every_answer_once_and_removes_what_it_merged(tmp_path):
    for part in range(3):  # three processes' worth of closed segments
        c = ResponseCache(str(tmp_path), "sig")
        for i in range(part * 5, part * 5 + 5):
            c.put(_call(i))
        c.close()
    before = _texts(ResponseCache(str(tmp_path), "sig"), 15)
    assert None not in before and len([f for f in _files(tmp_path / "sig") if f.startswith("seg-")]) == 3
    out = ResponseCache(str(tmp_path), "sig").compact()
    assert out["merged"] == 3 and out["entries"] == 30
    assert [f.split("-")[0] for f in _files(tmp_path / "sig")] == ["pack"]
    again = ResponseCache(str(tmp_path), "sig")
    assert _texts(again, 15) == before and len(again) == 30
    e = again.get("r3", 1, 7)
    assert e["tokens_in"] == 5.0 and e["cost_usd"] == pytest.approx(0.01) and e["finish_reason"] == "stop"
    # new answers after a compaction, then another: still one pack, holding all of them
    c = ResponseCache(str(tmp_path), "sig")
    c.put(_call(15))
    c.close()
    assert ResponseCache(str(tmp_path), "sig").compact()["entries"] == 32
    assert len(_files(tmp_path / "sig")) == 1
    assert ResponseCache(str(tmp_path), "sig").compact() == {"packs": 1, "merged": 0}  # nothing to do


def test_a_live_segment_is_kept_and_a_dead_process_segment_is_merged(tmp_path):
    live = ResponseCache(str(tmp_path), "sig")  # this process: alive, still writing
    live.put(_call(0))
    code = (
        "import json,sys; sys.path.insert(0, sys.argv[2]);"
        "from tests.unit.test_cache import _call; from tasks.infra.cache import ResponseCache;"
        "c = ResponseCache(sys.argv[1], 'sig'); c.put(_call(1)); import os; os._exit(0)"  # never closes
    )
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    subprocess.run([sys.executable, "-c", code, str(tmp_path), root], check=True, cwd=root)
    assert len([f for f in _files(tmp_path / "sig") if f.startswith("live-")]) == 2
    out = compact_all(str(tmp_path))["sig"]
    assert out["merged"] == 1  # the dead process's segment; ours is read but kept
    names = _files(tmp_path / "sig")
    assert [n.split("-")[0] for n in names] == ["live", "pack"]
    live.put(_call(2))  # the live writer keeps appending to its file
    live.close()
    assert _texts(ResponseCache(str(tmp_path), "sig"), 3) == [
        json.dumps({"i": i, "j": j}) for i in range(3) for j in (0, 1)
    ]


def test_a_crash_between_writing_the_pack_and_deleting_loses_nothing(tmp_path, monkeypatch):
    c = ResponseCache(str(tmp_path), "sig")
    for i in range(4):
        c.put(_call(i))
    c.close()
    ResponseCache(str(tmp_path), "sig").compact()
    c = ResponseCache(str(tmp_path), "sig")
    c.put(_call(4))
    c.close()

    calls = []

    def dies(self, path):
        calls.append(path)
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(type(c.fs), "rm_file", dies)
    with pytest.raises(KeyboardInterrupt):
        ResponseCache(str(tmp_path), "sig").compact()
    monkeypatch.undo()
    assert calls and len([f for f in _files(tmp_path / "sig") if f.startswith("pack-")]) == 2  # old and new
    back = ResponseCache(str(tmp_path), "sig")
    assert len(back) == 10 and None not in _texts(back, 5)
    assert back.compact()["entries"] == 10 and len(_files(tmp_path / "sig")) == 1


def test_a_torn_last_line_is_skipped(tmp_path):
    c = ResponseCache(str(tmp_path), "sig")
    c.put(_call(0))
    with open(c._live, "a") as fh:
        fh.write('{"key": "half')
    c._fh.close()
    c._fh = None  # as after kill -9: the file stays live-*
    back = ResponseCache(str(tmp_path), "sig")
    assert len(back) == 2 and _texts(back, 1)[0] is not None


def test_the_endpoint_is_part_of_the_key_and_no_url_reaches_the_signature(monkeypatch):
    from tasks.annotators.openai_compat import OpenAIAnnotator
    from tasks.core.params import Annotator, Runtime

    ann = OpenAIAnnotator(Annotator(backend="openai", model="m"), Runtime())
    sigs = {}
    for url in ("http://127.0.0.1:8001/v1", "http://127.0.0.1:8002/v1", "HTTP://user:secret@127.0.0.1:8001/v1/?k=1"):
        monkeypatch.setenv("OPENAI_BASE_URL", url)
        sigs[url] = (ann.signature_hash(), json.dumps(ann.signature()))
    a, b, c = sigs.values()
    assert a[0] != b[0], "two servers serving the same model name share no answers"
    assert a[0] == c[0], "credentials, a query or a trailing slash do not split the cache"
    assert not any("127.0.0.1" in s or "secret" in s for _, s in sigs.values())


def test_seke_cache_compact(tmp_path):
    from typer.testing import CliRunner

    from flows.cli.main import app

    for sig in ("a", "b"):
        c = ResponseCache(str(tmp_path), sig)
        c.put(_call(0))
        c.close()
    res = CliRunner().invoke(app, ["cache", "compact", "--root", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert all(_files(tmp_path / sig)[0].startswith("pack-") for sig in ("a", "b"))
    assert "response cache" in res.output


class _Disk:
    """A file system that fills up: `open` in tasks.infra.cache, whose writes fail with ENOSPC
    after `room` more bytes (part of a write lands first, as on a real disk) while `full`."""

    def __init__(self):
        self.full, self.room = False, 0

    def open(self, path, mode="r", **kw):
        disk, real = self, open(path, mode, **kw)

        class F:
            def write(self, b):
                if disk.full:
                    n = min(len(b), disk.room)
                    disk.room -= n
                    if n == 0:
                        raise OSError(28, "No space left on device", path)
                    return real.write(b[:n])
                return real.write(b)

            def __getattr__(self, name):
                return getattr(real, name)

        return F()


def test_answers_a_full_disk_held_back_are_written_when_space_returns(tmp_path, monkeypatch):
    import tasks.infra.cache as cache_mod

    disk = _Disk()
    monkeypatch.setattr(cache_mod, "open", disk.open, raising=False)
    c = ResponseCache(str(tmp_path), "sig")
    c.put(_call(0))
    disk.full, disk.room = True, 30  # the next answer's line is torn after 30 bytes
    c.put(_call(1))
    c.put(_call(2))
    assert c.unsaved == 4 and len(c) == 6  # in memory, not on disk
    assert len(ResponseCache(str(tmp_path), "sig")) == 2  # another process sees only what was written
    disk.full = False  # space came back within the run: the next write brings the rest
    c.put(_call(3))
    assert c.unsaved == 0
    c.close()
    back = ResponseCache(str(tmp_path), "sig")
    assert len(back) == 8 and None not in _texts(back, 4)


def test_a_disk_that_stays_full_names_the_cache_and_counts_what_is_lost(tmp_path, monkeypatch):
    import tasks.infra.cache as cache_mod
    from flows.supervise import disk_full
    from tasks.infra.cache import CacheFull

    disk = _Disk()
    monkeypatch.setattr(cache_mod, "open", disk.open, raising=False)
    c = ResponseCache(str(tmp_path), "sig")
    disk.full = True
    c.put(_call(0, n=3))
    with pytest.raises(CacheFull) as e:
        c.close()
    assert e.value.unsaved == 3
    line = disk_full(RuntimeError("stage failed")) or ""
    assert line == ""
    try:
        raise RuntimeError("the flow failed") from e.value
    except RuntimeError as outer:
        line = disk_full(outer) or ""
    assert "3 answers that arrived could not be written to the response cache" in line and str(tmp_path) in line
    assert "\n" not in line
