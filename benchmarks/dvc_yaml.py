"""What ruamel.yaml's C parser (the `ruamel.yaml.clib` dependency) saves `dvc` commands:
`dvc status` and `dvc repro --dry` in this checkout, side by side, with the C parser and with
ruamel.yaml's pure-Python parser (what DVC gets with ruamel.yaml >= 0.19.1 and no clib
installed), run after run. (`--dry` runs no stage; DVC still reads everything a repro reads.)

DVC reads dvc.yaml, dvc.lock and params.yaml (once for each stage that lists params) with
ruamel.yaml's safe loader; `make feid`, `seke run`, the incremental flow and the tests run
`dvc` commands many times.

    python benchmarks/dvc_yaml.py [--runs 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DVC = "from dvc.cli import main; raise SystemExit(main({argv!r}))"
COMMANDS = (["status", "-q"], ["repro", "--dry", "-q"])
PURE = "import ruamel.yaml.main as m; m.CParser = m.CEmitter = None; "


def _once(code: str) -> tuple[float, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, check=False)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--json", default="")
    a = ap.parse_args(argv)
    try:
        import _ruamel_yaml  # noqa: F401
    except ImportError:
        print("ruamel.yaml.clib is not installed here: nothing to compare", file=sys.stderr)
        return 2
    res: dict[str, dict] = {}
    for argv in COMMANDS:
        c_code = DVC.format(argv=argv)
        modes = {"C parser (ruamel.yaml.clib)": c_code, "pure Python": PURE + c_code}
        got: dict[str, list[tuple[float, float]]] = {m: [] for m in modes}
        _once(c_code)  # warm the page cache and DVC's state database
        for _ in range(a.runs):  # alternating, so a slow phase of the machine hits both
            for m, code in modes.items():
                got[m].append(_once(code))
        res[" ".join(argv[:-1])] = {
            m: {
                "wall_s": round(statistics.median(w for w, _ in v), 3),
                "cpu_s": round(statistics.median(c for _, c in v), 3),
            }
            for m, v in got.items()
        }
    print(f"`dvc` in {ROOT.name}, median of {a.runs} alternating runs each:")
    print(f"{'command':16s} {'parser':30s} {'wall s':>8s} {'CPU s':>8s}")
    for cmd, r in res.items():
        for m, x in r.items():
            print(f"{cmd:16s} {m:30s} {x['wall_s']:8.3f} {x['cpu_s']:8.3f}")
        c, p = r["C parser (ruamel.yaml.clib)"], r["pure Python"]
        saved = p["wall_s"] - c["wall_s"], p["cpu_s"] - c["cpu_s"]
        print(f"{cmd:16s} {'saved by the C parser':30s} {saved[0]:8.3f} {saved[1]:8.3f}")
    if a.json:
        Path(a.json).write_text(json.dumps({"runs": a.runs, "results": res}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
