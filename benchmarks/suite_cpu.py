"""Where the test suite's time goes: CPU by kind of process, and the floor it sets on the wall
time of `make test` on this machine.

Runs a command (default: the suite as `make test` runs it) and, every 0.3 s, reads the CPU
time of every process started after it from /proc (Linux), so a process that lived for at
least one sample is counted, forks included. The total is the operating system's own count of
the CPU of every descendant the command waited for (`RUSAGE_CHILDREN`); the kinds below it
are the sampled processes, grouped by what they run. The floor is total CPU / cores: the wall
time the same work would take with every core busy all the time, which no scheduling of the
tests can beat; only less work can.

    .venv/bin/python benchmarks/suite_cpu.py [--json out.json] [-- COMMAND ...]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SUITE = [str(Path(sys.executable).parent / "pytest"), "-q", "-n", "auto", "--dist", "loadfile"]
SUITE += ["--no-loadscope-reorder"]  # as `make test`: end-to-end files first (tests/conftest.py)
HZ = os.sysconf("SC_CLK_TCK")

# (kind, test on the command line), first match wins
KINDS = (
    ("stage (forked by the warm runner)", lambda c, forked: forked),
    ("dvc", lambda c, _: "/bin/dvc " in c or c.endswith("/bin/dvc")),
    ("stage client (python -m flows.run)", lambda c, _: "flows.run " in c),
    ("warm runner", lambda c, _: "flows.warm" in c),
    ("Prefect server", lambda c, _: "prefect server start" in c or "prefect.server" in c),
    ("incremental flow", lambda c, _: "flows.incremental" in c),
    ("seke / flows.cli", lambda c, _: "flows.cli" in c or "/bin/seke " in c),
    ("pytest workers", lambda c, _: "execnet" in c or "exec(eval(sys.stdin" in c or "/bin/pytest" in c),
    ("Label Studio", lambda c, _: "label-studio" in c or "label_studio" in c),
    ("Dask workers", lambda c, _: "multiprocessing" in c),
    ("the wheel's venv", lambda c, _: "/wheel" in c and "venv/bin" in c),
    ("uv / pip", lambda c, _: "/uv " in c or " pip " in c or "compileall" in c),
    ("git", lambda c, _: c.startswith("git ")),
    ("chromium", lambda c, _: "chrom" in c),
)


def _boot_s() -> float:
    with open("/proc/uptime") as fh:
        return time.time() - float(fh.read().split()[0])


class Sampler(threading.Thread):
    def __init__(self, t0: float, every: float = 0.3):
        super().__init__(daemon=True)
        self.t0, self.every, self.seen, self.stop = t0, every, {}, threading.Event()
        self.boot = _boot_s()

    def run(self) -> None:
        while not self.stop.is_set():
            self.sample()
            time.sleep(self.every)
        self.sample()

    def sample(self) -> None:
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{pid}/stat") as fh:
                    st = fh.read()
                rest = st[st.rindex(")") + 2 :].split()
                start = self.boot + int(rest[19]) / HZ
                if start < self.t0 - 1:
                    continue  # not ours: it was running before the command started
                cpu = (int(rest[11]) + int(rest[12])) / HZ
                key = (pid, rest[19])
                if key not in self.seen:
                    with open(f"/proc/{pid}/cmdline", "rb") as fh:
                        cmd = fh.read().replace(b"\0", b" ").decode(errors="replace").strip()
                    self.seen[key] = {"cmd": cmd, "ppid": rest[1], "cpu": cpu}
                else:
                    self.seen[key]["cpu"] = cpu
            except (OSError, ValueError, IndexError):
                continue


def kinds(seen: dict) -> dict[str, dict]:
    warm_pids = {pid for (pid, _), p in seen.items() if "flows.warm" in p["cmd"]}
    out: dict[str, dict] = {}
    for p in seen.values():
        if not p["cmd"]:
            continue  # a kernel thread, or a process gone before its first sample
        forked = p["ppid"] in warm_pids and "flows.warm" in p["cmd"]
        kind = next((k for k, test in KINDS if test(p["cmd"], forked)), "other")
        k = out.setdefault(kind, {"cpu_s": 0.0, "processes": 0})
        k["cpu_s"] += p["cpu"]
        k["processes"] += 1
    return dict(sorted(out.items(), key=lambda kv: -kv[1]["cpu_s"]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", help="write the figures here too")
    ap.add_argument("command", nargs="*", help="default: the suite as `make test` runs it")
    a = ap.parse_args(argv)
    cmd = a.command or SUITE
    cores = os.cpu_count() or 1
    t0 = time.time()
    sampler = Sampler(t0)
    sampler.start()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    w0 = time.monotonic()
    rc = subprocess.call(cmd, cwd=ROOT)
    wall = time.monotonic() - w0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    sampler.stop.set()
    sampler.join()
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    by_kind = kinds(sampler.seen)
    floor = cpu / cores
    res = {
        "command": " ".join(cmd),
        "exit": rc,
        "cores": cores,
        "wall_s": round(wall, 1),
        "cpu_s": round(cpu, 1),
        "floor_s": round(floor, 1),
        "cores_busy": round(cpu / wall, 2) if wall else None,
        "by_kind": {k: {"cpu_s": round(v["cpu_s"], 1), "processes": v["processes"]} for k, v in by_kind.items()},
    }
    print(f"\n{res['command']}: exit {rc}")
    print(f"wall {wall:.0f} s; CPU of every process it waited for {cpu:.0f} s on {cores} cores")
    print(f"floor (CPU / cores) {floor:.0f} s = {floor / 60:.1f} min; wall / floor {wall / floor:.2f}")
    print(f"{'CPU s':>8} {'share':>6} {'procs':>6}  kind (sampled every 0.3 s)")
    sampled = sum(v["cpu_s"] for v in by_kind.values())
    for k, v in by_kind.items():
        print(f"{v['cpu_s']:8.0f} {v['cpu_s'] / cpu:6.0%} {v['processes']:6d}  {k}")
    # processes that lived less than a sample are missing from the kinds; detached ones (the
    # on-demand daemon) are in the kinds but not in the total
    print(f"{sampled:8.0f} {sampled / cpu:6.0%} {'':6}  sampled, of the total")
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1) + "\n")
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
