"""Meta-World task names of KALM's published data -> kalm goal dicts (`kalm import`).

KALM's Meta-World files name each episode's task (`env_names`): short names such as `reach`,
or ids such as `rep-push-v2-goal-observable` (`rep-` marks the rephrase level's wording of the
same task). Their goal arrays are target positions, which say nothing about the task, so only
the name is read.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from kalm.envs.metaworld.constants import HAND, TCP_OFFSET
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


def published_episode(observations: np.ndarray, terminals: np.ndarray, success: bool | None
                      ) -> tuple[np.ndarray, np.ndarray, dict[str, str]]:
    """The `published_episode` hook of Meta-World: KALM's states in kalm's layout. s[0:3] is
    KALM's hand body, kalm's the tcp (metaworld's `tcp_center`), measured at tcp - hand =
    `TCP_OFFSET` (within 6 mm: the fingers move it, and no state records by how much); an
    episode the file marks successful ends at a terminal (KALM's wrapper ended it at the
    success, its files store a timeout). The rewards stay KALM's, and the attrs say so."""
    observations = np.asarray(observations, np.float32).copy()
    observations[:, HAND] += TCP_OFFSET.astype(np.float32)
    terminals = np.asarray(terminals).copy()
    if success and len(terminals):
        terminals[-1] = True
    return observations, terminals, {
        "hand_to_tcp": json.dumps([float(v) for v in TCP_OFFSET]),
        "rewards": "KALM's (shaped on its dense v2 reward), not kalm's episode_rewards"}
