"""An offline Hugging Face cache built by a test: repositories under their real names, in the
layout `huggingface_hub` itself writes (blobs, snapshots/<commit>/ links, refs/<revision>), so
the real resolution code reads them with `HF_HOME` pointing here and `HF_HUB_OFFLINE=1`."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def add_repo(home: Path, repo_id: str, files: Path, revision: str = "main") -> str:
    """Store every file under `files` as `repo_id` at `revision` (a branch or tag) in the cache
    of HF_HOME=`home`; returns the commit hash."""
    repo = home / "hub" / ("models--" + repo_id.replace("/", "--"))
    paths = sorted(p for p in files.rglob("*") if p.is_file())
    listing = hashlib.sha1()
    for path in paths:
        listing.update(str(path.relative_to(files)).encode() + path.read_bytes())
    commit = listing.hexdigest()
    for path in paths:
        data = path.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = repo / "snapshots" / commit / path.relative_to(files)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / revision).write_text(commit)
    return commit
