"""KALM's Meta-World tasks: which v3 env, which entity each observation slot fills, which levels.

Pure data (no metaworld import), so goals, rewards and suites work without the simulator. The
two hard composites are built by kalm (`composite.py`) because v3 has neither.
"""

from __future__ import annotations

from dataclasses import dataclass

LEVEL_TASKS: dict[str, tuple[str, ...]] = {
    "train": ("reach", "push", "pick-place", "button-press", "door-unlock", "door-open",
              "window-open", "faucet-open", "coffee-push", "coffee-button"),
    "easy": ("reach-wall", "push-wall", "pick-place-wall", "button-press-wall", "door-lock",
             "door-close", "window-close", "faucet-close"),
    "hard": ("make-coffee", "locked-door-open", "hammer", "soccer"),
}
LEVEL_TASKS["rephrase"] = LEVEL_TASKS["train"]  # same tasks, new wording
LEVELS = ("train", "rephrase", "easy", "hard")


@dataclass(frozen=True)
class TaskSpec:
    """One task: its simulator, the entity behind each native observation slot, its expert."""

    name: str
    slots: tuple[str, ...]  # entity of slot 1 (obs[4:11]) and, when present, slot 2 (obs[11:18])
    policies: tuple[str, ...]  # metaworld scripted-policy class per stage
    stages: tuple[str, ...] = ()  # composites: the native tasks judged in order
    wall: bool = False  # writes the constant wall block

    @property
    def env_name(self) -> str | None:
        """The v3 env name, None for kalm's composites."""
        return None if self.stages else f"{self.name}-v3"

    @property
    def composite(self) -> bool:
        return bool(self.stages)


def _policy(task: str) -> str:
    return "Sawyer" + "".join(p.capitalize() for p in task.split("-")) + "V3Policy"


def _native(name: str, *slots: str, wall: bool = False) -> TaskSpec:
    return TaskSpec(name, tuple(slots), (_policy(name),), wall=wall)


TASKS: dict[str, TaskSpec] = {t.name: t for t in (
    _native("reach", "target_object"),
    _native("push", "target_object"),
    _native("pick-place", "target_object"),
    _native("button-press", "button"),
    _native("door-unlock", "lock"),
    _native("door-open", "handle"),
    _native("window-open", "window"),
    _native("faucet-open", "faucet"),
    _native("coffee-push", "coffee"),
    _native("coffee-button", "coffee_button"),
    _native("reach-wall", "target_object", wall=True),
    _native("push-wall", "target_object", wall=True),
    _native("pick-place-wall", "target_object", wall=True),
    _native("button-press-wall", "button", wall=True),
    _native("door-lock", "lock"),
    _native("door-close", "handle"),
    _native("window-close", "window"),
    _native("faucet-close", "faucet"),
    _native("hammer", "hammer", "nail"),
    _native("soccer", "soccer"),
    TaskSpec("make-coffee", ("coffee", "coffee_button"),
             (_policy("coffee-push"), _policy("coffee-button")),
             stages=("coffee-push", "coffee-button")),
    TaskSpec("locked-door-open", ("lock", "handle"),
             (_policy("door-unlock"), _policy("door-open")),
             stages=("door-unlock", "door-open")),
)}
NATIVE_TASKS = tuple(n for n, t in TASKS.items() if not t.composite)
COMPOSITE_TASKS = tuple(n for n, t in TASKS.items() if t.composite)


def task_level(task: str) -> str:
    """The level a task is first listed in (train tasks also appear in rephrase)."""
    for level in ("train", "easy", "hard"):
        if task in LEVEL_TASKS[level]:
            return level
    raise KeyError(task)
