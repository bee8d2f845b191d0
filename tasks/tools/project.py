"""`seke init DIR`: a new project folder that builds FEID with the installed package.

The templates are this repository's own `dvc.yaml` and `params.yaml` (package data under
`tasks/project/`, links to the files at the repository root, so there is one copy of each;
named `*.template.yaml`, because DVC would take a `dvc.yaml` there for a second pipeline).
In a project the code comes from the installed package, not from project files, so the
stages' dependencies on `tasks/`, `flows/` and the stamp of the code they all run (stage
`code`, dropped) are replaced by one on `seke.version`, which `seke run` refreshes: upgrading
the package re-runs the stages.
"""

from __future__ import annotations

import shutil
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import yaml

from tasks.core.dvcfile import STAMP, STAMP_STAGE
from tasks.core.knowledge import PROJECT_DIR
from tasks.core.yamlio import load_yaml

TEMPLATES = Path(__file__).resolve().parents[1] / "project"
CODE = ("tasks", "flows", "expectations")
VERSION_FILE = "seke.version"

GITIGNORE = """.seke/
__pycache__/
reports/feid.html
reports/feid_files/
exports/
"""

README = """# {name}: a FEID project

Built with SEKE {version}. `params.yaml` says where the images are (`paths.input`, now
`{images}`) and every other setting; `dvc.yaml` is the pipeline.

```bash
seke run        # dvc repro: ingest -> crop -> prompt -> sample -> verify -> export -> data/feid/
seke report     # reports/feid.html
```

Label a random sample of your faces (an `expression` column in a manifest, `paths.manifest`,
or `seke review export` / `seke review import`) so that verify can calibrate its confidence and
its error guarantee on them.

`knowledge/` overrides the package's emotion knowledge: put your own `labels.yaml`,
`au_catalogue.yaml`, `prototypes.yaml` or `va.yaml` there (`seke knowledge refit` writes
`knowledge/va.yaml`). The stages depend on that folder, so the next `seke run` uses them.
"""

KNOWLEDGE_README = """Files here replace the SEKE package's files of the same name (labels.yaml,
au_catalogue.yaml, prototypes.yaml, va.yaml), one by one. The package's versions are the
starting point: copy one from the installed package's tasks/knowledge/ and edit it.
"""


def package_version() -> str:
    try:
        return version("seke")
    except PackageNotFoundError:
        return "0+unknown"


def write_version(dest: Path) -> bool:
    """Write `seke.version` if it differs from the installed package's; True if it changed."""
    f = dest / VERSION_FILE
    text = f"seke {package_version()}\n"
    if f.exists() and f.read_text() == text:
        return False
    f.write_text(text)
    return True


def project_dvc_yaml() -> dict:
    """The repository's dvc.yaml with the code dependencies replaced by `seke.version`."""
    d = load_yaml((TEMPLATES / "dvc.template.yaml").read_text())
    del d["stages"][STAMP_STAGE]  # the code every stage runs is the package's: seke.version stamps it
    for stage in d["stages"].values():
        deps = [x for x in stage.get("deps", []) if str(x).split("/")[0] not in CODE and x != STAMP]
        stage["deps"] = [*deps, PROJECT_DIR, VERSION_FILE]  # the project's knowledge overrides, the package
    d["plots"] = [p for p in d.get("plots", []) if not _plot_path(p).startswith("plots/feab")]  # FEAB: the repo's
    return d


def _plot_path(p) -> str:
    return str(next(iter(p)) if isinstance(p, dict) else p)


def project_params(images: str, manifest: str) -> dict:
    p = load_yaml((TEMPLATES / "params.template.yaml").read_text())
    p["paths"].update(input=images, manifest=manifest)
    p["bench"]["sources"] = []  # FEAB sources are the user's to list
    return p


def init(dest: Path, images: str, manifest: str = "", force: bool = False) -> list[str]:
    """Create the project at `dest`; returns the files written. Refuses to overwrite a
    project unless `force`."""
    dest.mkdir(parents=True, exist_ok=True)
    existing = [f for f in ("dvc.yaml", "params.yaml") if (dest / f).exists()]
    if existing and not force:
        raise FileExistsError(f"{dest} already has {', '.join(existing)}: pass --force to overwrite")
    files = {
        "params.yaml": "# SEKE project parameters (see the SEKE README for every section)\n"
        + yaml.safe_dump(project_params(images, manifest), sort_keys=False),
        "dvc.yaml": yaml.safe_dump(project_dvc_yaml(), sort_keys=False),
        ".gitignore": GITIGNORE,
        "README.md": README.format(name=dest.resolve().name, version=package_version(), images=images),
    }
    for name, text in files.items():
        if name == "README.md" and (dest / name).exists():
            continue
        (dest / name).write_text(text)
    write_version(dest)
    (dest / PROJECT_DIR).mkdir(exist_ok=True)
    if not (dest / PROJECT_DIR / "README.md").exists():
        (dest / PROJECT_DIR / "README.md").write_text(KNOWLEDGE_README)
    review = Path(project_params(images, manifest)["paths"]["review"])
    review = review if review.is_absolute() else dest / review
    if not review.exists():
        from tasks.tools.review import write_empty

        write_empty(review)
    inbox = Path(project_params(images, manifest)["paths"]["inbox"])
    if inbox.parts:
        from tasks.tools.incremental import write_empty as empty_inbox

        empty_inbox(inbox if inbox.is_absolute() else dest / inbox)
    _vcs(dest)
    shown = str(review.relative_to(dest)) if review.is_relative_to(dest) else str(review)
    return [*files, VERSION_FILE, ".dvc/", f"{PROJECT_DIR}/", shown]


def _vcs(dest: Path) -> None:
    """git (when it is installed) and DVC in the new folder."""
    git = shutil.which("git")
    if git and not (dest / ".git").exists():
        subprocess.run([git, "init", "-q"], cwd=dest, check=True)
    if not (dest / ".dvc").exists():
        cmd = ["dvc", "init", "-q"] + ([] if git else ["--no-scm"])
        subprocess.run(cmd, cwd=dest, check=True)
        subprocess.run(["dvc", "config", "core.analytics", "false"], cwd=dest, check=True)
