"""Atomic writes (a temporary file in the same folder renamed over the target) and identity
manifests for resumable folders."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def write_text_atomic(path: str | Path, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    tmp.replace(path)
    return path


def write_json(obj: Any, path: str | Path) -> Path:
    return write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True))


def save_gif(
    frames: Sequence[np.ndarray], path: str | Path, fps: float = 2.0, loop: int = 0
) -> Path:
    """Write frames (H, W, 3 uint8) as an animated GIF, atomically."""
    if len(frames) == 0:
        raise ValueError("save_gif needs at least one frame")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    from PIL import Image

    images = [Image.fromarray(np.asarray(f, dtype=np.uint8)) for f in frames]
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:],
                   duration=int(1000 / fps), loop=loop)
    tmp.replace(path)
    return path


# ----------------------------------------------------------------------------- identity manifests
MANIFEST = "manifest.json"


def digest(obj: Any) -> str:
    """SHA-256 of an object's canonical JSON (sorted keys)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_manifest(folder: str | Path, name: str = MANIFEST) -> Any:
    """The identity recorded in FOLDER/NAME, or None (missing or unreadable)."""
    path = Path(folder) / name
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def superseded_path(folder: Path, old_identity: Any) -> Path:
    """A fresh sibling name `FOLDER.superseded-<hash of the old identity>`."""
    return superseded_name(folder, digest(old_identity)[:8])


def superseded_name(folder: Path, tag: str) -> Path:
    """A fresh sibling name `FOLDER.superseded-TAG` for moving old work aside, never over other
    old work: an earlier folder with that name (a setting changed back and forth) keeps it and
    the new one gets a counter."""
    base = folder.with_name(f"{folder.name}.superseded-{tag}")
    candidate, n = base, 1
    while candidate.exists():
        n += 1
        candidate = base.with_name(f"{base.name}-{n}")
    return candidate


def claim_folder(folder: str | Path, identity: Any, stale: str = "remove",
                 name: str = MANIFEST) -> bool:
    """Make FOLDER the place of the work described by `identity` (a JSON-able object).

    Returns True when FOLDER already holds work for this identity (its manifest matches: reuse
    or resume what is there). Otherwise anything in FOLDER (another identity, or no manifest)
    is first taken away in one rename, then FOLDER is recreated empty with the manifest and
    False is returned. `stale="move"` keeps the old folder as `FOLDER.superseded-<hash>`;
    `stale="remove"` deletes it (after the rename, so no reader ever sees a half-deleted
    folder next to a fresh manifest).
    """
    if stale not in ("remove", "move"):
        raise ValueError(f"stale must be 'remove' or 'move', got {stale!r}")
    folder = Path(folder)
    identity = json.loads(json.dumps(identity, sort_keys=True, default=str))  # canonical form
    if folder.exists() and any(folder.iterdir()):
        old = read_manifest(folder, name)
        if old == identity:
            return True
        if stale == "move":
            folder.rename(superseded_path(folder, old))
        else:
            trash = folder.with_name(f".{folder.name}.stale{os.getpid()}")
            folder.rename(trash)
            shutil.rmtree(trash, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    write_json(identity, folder / name)
    return False
