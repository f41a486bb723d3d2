"""Atomic writes: the one place where medreason writes a file or a folder so that a crash, a kill or a full disk
never leaves it half-written, and whatever was there before stays intact until the new copy is complete.

    from medreason.io import atomic_write_json, atomic_open, atomic_dir
    atomic_write_json("results/run/eval.json", {"acc": 0.3})
    with atomic_open("results/run/eval_items.jsonl") as f:      # renamed over the target only on success
        f.write(...)
    with atomic_dir("lora_adapter/SmolLM2-135M-Instruct") as tmp:  # fill tmp; it replaces the folder on success
        model.save_pretrained(tmp)

Nothing here writes through a symlink: a temporary file is opened with O_EXCL | O_NOFOLLOW, and the final rename
replaces a symlink standing at the target (the link, not what it points to).

Temporary files and folders sit beside their target (same filesystem, so the final rename is atomic) and are
named `.<name>.tmp-<random>`, which `.gitignore`-style globs and the book's caches never pick up.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path


def _tmp_name(final: Path, kind: str = "tmp") -> Path:
    return final.with_name(f".{final.name}.{kind}-{uuid.uuid4().hex[:12]}")


@contextmanager
def atomic_open(path: str | Path, mode: str = "w", encoding: str | None = "utf-8"):
    """A file handle to a temporary file beside `path`, renamed over `path` when the block succeeds."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(final)
    try:
        # a fresh file (O_EXCL), never through a symlink (O_NOFOLLOW); the rename replaces a symlink at `path`
        # itself, never the file it points to
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666)
        with os.fdopen(fd, mode, encoding=None if "b" in mode else encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> Path:
    with atomic_open(path) as f:
        f.write(text)
    return Path(path)


def atomic_write_json(path: str | Path, data) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


@contextmanager
def atomic_dir(final: str | Path):
    """A fresh temporary folder beside `final`; when the block succeeds it takes `final`'s place (the previous
    folder, if any, is removed only after the new one is in place; between the two renames a crash leaves it as
    `.<name>.old-*`, which the next call cleans up). On an error the temporary folder is removed and `final` is
    untouched."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    # a plain mkdir (mode from the umask), not mkdtemp: mkdtemp's 0700 would stay on the finished folder
    tmp = _tmp_name(final)
    tmp.mkdir()
    old = _tmp_name(final, "old")
    try:
        yield tmp
        if final.exists() or final.is_symlink():
            os.replace(final, old)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not final.exists():  # failed between the two renames: put the previous one back
            os.replace(old, final)
        raise
    if old.is_symlink() or (old.exists() and not old.is_dir()):  # a symlink that stood at `final`: only the link goes
        old.unlink()
    elif old.is_dir():
        shutil.rmtree(old, ignore_errors=True)
    for stale in final.parent.glob(f".{final.name}.old-*"):  # left by a process killed between the renames
        shutil.rmtree(stale, ignore_errors=True)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def first_existing(path: str | Path) -> Path:
    """The path itself when it exists, else its nearest existing parent: what decides whether a folder can be
    created there (a file on the way, or no write permission)."""
    path = Path(path)
    return next(p for p in [path, *path.absolute().parents] if p.exists())


# files a model or tokenizer loads from a folder; README, licences and .gitattributes decide nothing
MODEL_FILE_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".json", ".jinja", ".model", ".txt", ".tiktoken")
NOT_LOADED = {"README.md", "LICENSE", "LICENSE.txt", ".gitattributes"}

_memo: dict[tuple, str] = {}


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes (through a symlink, as a Hub snapshot's files are), memoised per version."""
    st = Path(path).stat()
    key = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns, st.st_ino)
    if key not in _memo:
        _memo[key] = sha256_file(path)
    return _memo[key]


def folder_sha256(folder: Path, every_file: bool = False) -> str | None:
    """One sha256 over (name, sha256) of the folder's files, sorted by name: every regular file with
    `every_file`, else the files a model load reads (MODEL_FILE_SUFFIXES). None for a folder without any."""
    folder = Path(folder)
    files = sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and p.name not in NOT_LOADED and (every_file or p.name.endswith(MODEL_FILE_SUFFIXES))
    )
    if not files:
        return None
    h = hashlib.sha256()
    for p in files:
        h.update(p.name.encode() + b"\0" + file_sha256(p).encode() + b"\n")
    return h.hexdigest()
