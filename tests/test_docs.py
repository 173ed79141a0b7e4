"""The documentation runs as written: every ```bash and ```python block of README.md and docs/*.md.

Blocks run in order, per file, in a fresh copy of the repository (so a block may use what an earlier
block of the same page made, e.g. a short training run, and nothing leaks into the checkout).
Blocks fenced as ```console or ```text are illustrations (real data, trained workdirs, long runs)
and are not run.
"""
from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = ["README.md"] + sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "docs", "*.md")))
FENCE = re.compile(r"^```(\w+)[^\n]*\n(.*?)^```\s*$", re.S | re.M)
RUNNABLE = ("bash", "python")
IGNORE = shutil.ignore_patterns(".git", "runs", "__pycache__", "*.egg-info", ".pytest_cache", "data")


def blocks(page: str):
    """(language, code) of the runnable blocks of `page`, in order."""
    text = open(os.path.join(ROOT, page), encoding="utf-8").read()
    return [(m.group(1), m.group(2)) for m in FENCE.finditer(text) if m.group(1) in RUNNABLE]


LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)\s]*)?\)")


def test_readme_links_every_docs_page_and_every_relative_link_resolves():
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    missing = [p for p in PAGES[1:] if f"]({p}" not in readme]
    assert not missing, f"README.md does not link {missing}; add them to its Documentation list"
    broken = []
    for page in PAGES:
        text = open(os.path.join(ROOT, page), encoding="utf-8").read()
        for target in LINK.findall(text):
            if "://" in target or target.startswith("mailto:"):
                continue
            if not os.path.exists(os.path.join(ROOT, os.path.dirname(page), target)):
                broken.append(f"{page} -> {target}")
    assert not broken, f"links to files that do not exist: {broken}"


def test_fences_are_recognised():
    sample = "x\n```bash\necho hi\n```\n```console\nrm -rf /\n```\n```python\nprint(1)\n```\n"
    found = [(m.group(1), m.group(2)) for m in FENCE.finditer(sample)]
    assert found == [("bash", "echo hi\n"), ("console", "rm -rf /\n"), ("python", "print(1)\n")]


@pytest.mark.parametrize("page", [p for p in PAGES if blocks(p)])
def test_page_runs_as_written(page, tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(ROOT, repo, ignore=IGNORE)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(repo))
    for i, (lang, code) in enumerate(blocks(page)):
        cmd = ["bash", "-euo", "pipefail", "-c", code] if lang == "bash" else [sys.executable, "-c", code]
        out = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, f"{page} block {i} ({lang}) failed:\n{code}\n{out.stderr[-3000:]}"
