import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the checkout, whatever the editable install says
sys.path.insert(0, str(Path(__file__).parent))  # test helpers (project.py, simserver.py)
SHARED = ROOT.parent / "shared" / "data"

os.environ.setdefault("PREFECT_HOME", str(ROOT / ".seke" / "prefect-tests"))
from flows import env  # noqa: E402

env.apply()
