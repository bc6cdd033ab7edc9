"""Meta-World task names of KALM's published data -> kalm goal dicts (`kalm import`).

KALM's Meta-World files name each episode's task (`env_names`): short names such as `reach`,
or ids such as `rep-push-v2-goal-observable` (`rep-` marks the rephrase level's wording of the
same task). Their goal arrays are target positions, which say nothing about the task, so only
the name is read.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from kalm.envs.metaworld.tasks import TASKS

_SUFFIX = re.compile(r"(-v\d+)?(-goal-(observable|hidden))?$")


def task_from_name(name: str) -> str:
    """The kalm task of a KALM task id (`rep-` prefix, version and goal-observable suffixes
    dropped); ValueError naming the id when it is no KALM task."""
    text = str(name).strip().lower()
    base = _SUFFIX.sub("", text.removeprefix("rep-"))
    if base not in TASKS:
        raise ValueError(f"task {name!r} is not one of KALM's Meta-World tasks "
                         f"({', '.join(TASKS)})")
    return base


def goal_from_task_name(name: str) -> dict[str, Any]:
    task = TASKS[task_from_name(name)]
    if task.composite:
        return {"kind": "sequence", "task": task.name, "stages": list(task.stages)}
    return {"kind": "task", "task": task.name}


def published_goal(record: Mapping[str, Any]) -> dict[str, Any] | None:
    """The `published_goal` hook of Meta-World: the task name decides."""
    name = record.get("task")
    if name is None or str(name) == "":
        return None
    return goal_from_task_name(str(name))
