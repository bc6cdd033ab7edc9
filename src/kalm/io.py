"""Atomic writes: a temporary file in the same folder renamed over the target."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def write_text_atomic(path: str | Path, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    tmp.replace(path)
    return path


def write_json(obj: Any, path: str | Path) -> Path:
    return write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True))
