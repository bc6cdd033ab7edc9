"""Goal suites (JSONL): the one way goals enter collection, imagination and evaluation.

Each line is `{"instruction": str, "level": str, "goal": {...}, "init": [obs_dim floats]?}`; the
goal is checked by the environment's `validate_goal` (CLEVR unless another env is named). Every
problem is reported with the file and line number.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kalm.envs.registry import EnvLike

BUILTIN_LEVELS = ("train", "rephrase", "easy", "hard")  # CLEVR's; other envs name their own
# halves of a suite by goal: defaults are chosen on `dev`, headlines reported on `test`
SPLITS = ("dev", "test")
# levels whose goals the real data shows: nothing about them is held out, so never split
UNSPLIT_LEVELS = ("train",)
_LINE_KEYS = {"instruction", "level", "goal", "init"}


class SuiteError(ValueError):
    """A malformed goal-suite file; the message names the file and line."""


@dataclass(frozen=True)
class SuiteEntry:
    instruction: str
    level: str
    goal: dict[str, Any]
    init: tuple[float, ...] | None = None
    source: str = ""  # "file:line", for messages

    @property
    def goal_key(self) -> str:
        """Canonical JSON of the goal: entries with equal keys are paraphrases of one goal."""
        return json.dumps(self.goal, sort_keys=True)


@dataclass
class GoalSuite:
    """Suite entries plus a grouping of paraphrases by (level, goal)."""

    entries: list[SuiteEntry]
    name: str = ""
    _groups: dict[str, list[SuiteEntry]] = field(default_factory=dict, repr=False)
    _by_goal: dict[str, list[str]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        for e in self.entries:
            self._groups.setdefault(f"{e.level}|{e.goal_key}", []).append(e)
            self._by_goal.setdefault(e.goal_key, []).append(e.instruction)

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def goals(self) -> list[dict[str, Any]]:
        """Distinct goals in first-appearance order."""
        return [group[0].goal for group in self._groups.values()]

    def paraphrases(self, goal: dict[str, Any]) -> list[str]:
        """Every instruction of `goal` in this suite (all levels)."""
        return list(self._by_goal.get(json.dumps(goal, sort_keys=True), []))

    def groups(self) -> list[list[SuiteEntry]]:
        return list(self._groups.values())

    @property
    def levels(self) -> list[str]:
        return sorted({e.level for e in self.entries})

    def by_level(self, level: str) -> GoalSuite:
        return GoalSuite([e for e in self.entries if e.level == level], name=f"{self.name}:{level}")

    def split(self, part: str) -> GoalSuite:
        """The `dev` or `test` half of the suite's goals, every phrasing of a goal on the same
        side: goals ordered by a hash of their canonical JSON (fixed by content, not by file
        order), the first half (rounded down) dev, the rest test, within each level."""
        if part not in SPLITS:
            raise SuiteError(f"unknown split {part!r}; expected one of {', '.join(SPLITS)}")
        chosen: set[tuple[str, str]] = set()
        for level in self.levels:
            keys = sorted({e.goal_key for e in self.entries if e.level == level},
                          key=lambda k: hashlib.sha256(k.encode()).hexdigest())
            half = keys[: len(keys) // 2] if part == "dev" else keys[len(keys) // 2 :]
            chosen.update((level, k) for k in half)
        entries = [e for e in self.entries if (e.level, e.goal_key) in chosen]
        if not entries:
            raise SuiteError(f"{self.name}: its {part} half is empty (one goal per level "
                             "cannot be split)")
        return GoalSuite(entries, name=f"{self.name}@{part}")


def parse_suite_lines(
    lines: Iterable[str],
    source: str,
    validate_goal: Callable[[Any], dict[str, Any]],
    obs_dim: int,
) -> list[SuiteEntry]:
    """Parse JSONL lines; `validate_goal` is the environment's goal checker."""
    entries = []
    for lineno, raw in enumerate(lines, start=1):
        text = raw.strip()
        if not text:
            continue
        where = f"{source}:{lineno}"
        try:
            entries.append(_parse_line(text, where, validate_goal, obs_dim))
        except SuiteError:
            raise
        except ValueError as exc:
            raise SuiteError(f"{where}: {exc}") from None
    if not entries:
        raise SuiteError(f"{source}: the suite is empty")
    return entries


def _parse_line(
    text: str, where: str, validate_goal: Callable[[Any], dict[str, Any]], obs_dim: int
) -> SuiteEntry:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SuiteError(f"{where}: bad JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(obj, dict):
        raise SuiteError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    missing = sorted({"instruction", "goal"} - set(obj))
    if missing:
        raise SuiteError(f"{where}: missing key(s) {', '.join(map(repr, missing))}")
    unknown = sorted(set(obj) - _LINE_KEYS)
    if unknown:
        raise SuiteError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; "
                         f"expected {sorted(_LINE_KEYS)}")
    instruction = obj["instruction"]
    if not isinstance(instruction, str):
        raise SuiteError(f"{where}: 'instruction' must be a string")
    level = obj.get("level", "custom")
    if not isinstance(level, str) or not level:
        raise SuiteError(f"{where}: 'level' must be a non-empty string")
    try:
        goal = validate_goal(obj["goal"])
    except ValueError as exc:
        raise SuiteError(f"{where}: goal: {exc}") from None
    init = obj.get("init")
    if init is not None:
        init = _parse_init(init, where, obs_dim)
    return SuiteEntry(instruction=instruction, level=level, goal=goal, init=init, source=where)


def _parse_init(init: Any, where: str, obs_dim: int) -> tuple[float, ...]:
    if not isinstance(init, list) or len(init) != obs_dim:
        size = len(init) if isinstance(init, list) else type(init).__name__
        raise SuiteError(f"{where}: 'init' must be a list of {obs_dim} numbers, got {size}")
    values = []
    for i, v in enumerate(init):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise SuiteError(f"{where}: 'init'[{i}] must be a finite number, got {v!r}")
        values.append(float(v))
    return tuple(values)


def load_suite(
    path: str | Path,
    validate_goal: Callable[[Any], dict[str, Any]] | None = None,
    obs_dim: int | None = None,
    env: EnvLike = "clevr",
) -> GoalSuite:
    """Load and validate a JSONL suite file with `env`'s goal checker (unless one is given)."""
    if validate_goal is None or obs_dim is None:
        from kalm.envs.registry import resolve_env

        definition = resolve_env(env)
        validate_goal = validate_goal or definition.validate_goal
        obs_dim = obs_dim or definition.spec.obs_dim
    path = Path(path)
    if not path.is_file():
        raise SuiteError(f"{path}: no such suite file")
    with path.open(encoding="utf-8") as fh:
        entries = parse_suite_lines(fh, str(path), validate_goal, obs_dim)
    return GoalSuite(entries, name=path.stem)


def builtin_suite_path(level: str, env: EnvLike = "clevr") -> Path:
    """The file of one of `env`'s built-in suites."""
    from kalm.envs.registry import resolve_env

    definition = resolve_env(env)
    path = definition.suite_path(level)
    if path is None:
        names = ", ".join((*definition.levels, "all")) if definition.levels else "none"
        raise SuiteError(f"unknown built-in suite {level!r} for env {definition.name!r}; "
                         f"expected one of {names} or --suite-file")
    return path


def load_builtin_suite(level: str, env: EnvLike = "clevr", split: str | None = None
                       ) -> GoalSuite:
    """One built-in suite of `env`, or `all` for all of them together; with SPLIT, its `dev` or
    `test` half by goal (the train level whole: its goals are in the data)."""
    if split is not None and level not in UNSPLIT_LEVELS:
        return load_builtin_suite(level, env).split(split)
    from kalm.envs.registry import resolve_env

    definition = resolve_env(env)
    if level == "all":
        levels = definition.levels
        if not levels:
            raise SuiteError(f"env {definition.name!r} has no built-in suites; use --suite-file")
        entries: list[SuiteEntry] = []
        for name in levels:
            entries.extend(load_suite(builtin_suite_path(name, definition),
                                      env=definition).entries)
        return GoalSuite(entries, name="all")
    return load_suite(builtin_suite_path(level, definition), env=definition)


def resolve_suite(suite: str | None, suite_file: str | Path | None,
                  env: EnvLike = "clevr") -> GoalSuite:
    """The suite named on the command line: a file wins over a built-in name."""
    if suite_file is not None:
        return load_suite(suite_file, env=env)
    return load_builtin_suite(suite or "train", env)


def goal_cycle(suite: GoalSuite, n: int) -> Sequence[list[SuiteEntry]]:
    """n paraphrase groups cycling through the suite's goals (episode i gets goal i mod G)."""
    groups = suite.groups()
    return [groups[i % len(groups)] for i in range(n)]
