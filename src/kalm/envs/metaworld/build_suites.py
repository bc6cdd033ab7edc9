"""Regenerates the built-in Meta-World suites (`suites/*.jsonl`) from `language.py`.

    python -m kalm.envs.metaworld.build_suites
"""

from __future__ import annotations

import json
from pathlib import Path

from kalm.envs.metaworld.env import goal_for
from kalm.envs.metaworld.language import instructions
from kalm.envs.metaworld.tasks import LEVEL_TASKS, LEVELS

SUITES = Path(__file__).parent / "suites"


def suite_lines(level: str) -> list[str]:
    return [json.dumps({"instruction": text, "level": level, "goal": goal_for(task)})
            for task in LEVEL_TASKS[level] for text in instructions(task, level)]


def main() -> None:
    SUITES.mkdir(exist_ok=True)
    for level in LEVELS:
        lines = suite_lines(level)
        (SUITES / f"{level}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
        print(f"{level}: {len(lines)} lines")


if __name__ == "__main__":
    main()
