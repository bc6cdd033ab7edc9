"""Closed-loop evaluation of a policy in the real simulator, per goal level.

Episode i takes goal i mod G of the suite (per level), one paraphrase drawn per episode, the
suite's `init` or a reset seeded by (seed, i), and success by the env's own signal
(`info["is_success"]` at some step; envs that never terminate still count).

Where goal dicts name a task (`goal["task"]`, as Meta-World's do: a level mixes tasks of very
different difficulty), each level also reports success per task; envs whose goals have no task
get the per-level numbers only. Continuous and discrete policies run the same way: the action
type is the env's and the policy's business.

Policies with a batched `act_batch` (trained policies) step `vector_envs` environments per
worker side by side with one forward pass per step across them; other policies (the expert,
which reads the live simulator, the LLM baseline) run one episode at a time. Both give the same
episodes for the same seed.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tqdm import tqdm

from kalm.data.episodes import Episode
from kalm.data.parallel import imap_ordered
from kalm.data.rollout import (
    EpisodeTask,
    Policy,
    can_act_batch,
    episode_seed,
    run_episode,
    run_episodes,
)
from kalm.data.suites import GoalSuite, SuiteEntry
from kalm.eval.stats import wilson_interval
from kalm.io import write_json  # noqa: F401  (re-exported for callers)


def goal_task(goal: Any) -> str | None:
    """The task a goal belongs to, for the per-task breakdown (None: no breakdown)."""
    task = goal.get("task") if isinstance(goal, dict) else None
    return task if isinstance(task, str) and task else None


@dataclass
class LevelResult:
    successes: int = 0
    episodes: int = 0
    lengths: list[int] = field(default_factory=list)
    tasks: dict[str, LevelResult] = field(default_factory=dict)  # per task, in first-seen order

    @property
    def success_rate(self) -> float:
        return self.successes / self.episodes if self.episodes else 0.0

    def add(self, success: bool, length: int, task: str | None = None) -> None:
        self.episodes += 1
        self.successes += int(success)
        self.lengths.append(length)
        if task is not None:
            self.tasks.setdefault(task, LevelResult()).add(success, length)

    def to_json(self) -> dict[str, Any]:
        lo, hi = wilson_interval(self.successes, self.episodes)
        out = {"success_rate": self.success_rate, "episodes": self.episodes,
               "successes": self.successes, "ci95": [lo, hi],
               "mean_length": float(np.mean(self.lengths)) if self.lengths else 0.0}
        if self.tasks:
            out["tasks"] = {k: v.to_json() for k, v in self.tasks.items()}
        return out


@dataclass
class EvalResult:
    policy: str
    seed: int
    levels: dict[str, LevelResult]
    episodes: list[Episode] = field(default_factory=list, repr=False)

    def to_json(self) -> dict[str, Any]:
        return {"policy": self.policy, "seed": self.seed,
                "levels": {k: v.to_json() for k, v in self.levels.items()}}

    def table(self) -> str:
        rows = ["| level | success | 95% CI | episodes | mean length |",
                "|---|---|---|---|---|"]
        for name, r in self.levels.items():
            j = r.to_json()
            rows.append(f"| {name} | {100 * j['success_rate']:.1f}% | "
                        f"[{100 * j['ci95'][0]:.1f}, {100 * j['ci95'][1]:.1f}] | "
                        f"{r.episodes} | {j['mean_length']:.1f} |")
        if any(r.tasks for r in self.levels.values()):
            rows += ["", "| level | task | success | 95% CI | episodes | mean length |",
                     "|---|---|---|---|---|---|"]
            for name, r in self.levels.items():
                for task, t in r.tasks.items():
                    j = t.to_json()
                    rows.append(f"| {name} | {task} | {100 * j['success_rate']:.1f}% | "
                                f"[{100 * j['ci95'][0]:.1f}, {100 * j['ci95'][1]:.1f}] | "
                                f"{t.episodes} | {j['mean_length']:.1f} |")
        return "\n".join(rows)


@dataclass(frozen=True)
class EvalTask:
    level: str
    index: int  # episode index within the level
    entry: SuiteEntry  # the paraphrase used
    seed: int


def plan_episodes(suite: GoalSuite, episodes: int, seed: int) -> list[EvalTask]:
    """`episodes` tasks per level, cycling through the level's goals."""
    tasks = []
    for level in suite.levels:
        groups = suite.by_level(level).groups()
        for i in range(episodes):
            group = groups[i % len(groups)]
            s = episode_seed(seed, i)
            rng = np.random.default_rng(s)
            entry = group[int(rng.integers(len(group)))]
            tasks.append(EvalTask(level, i, entry, s))
    return tasks


PolicyFactory = Callable[[], Policy]
_WORKER: dict[str, Any] = {}
VECTOR_ENVS = 16  # environments stepped side by side per worker (batched policies)


@dataclass(frozen=True)
class _Work:
    policy: PolicyFactory | str
    tasks: list[EvalTask]
    seed: int
    init_region: str
    env: str
    vector_envs: int
    instructions: tuple[str, ...]  # every instruction of the evaluation (for `prepare`)
    call: str  # one evaluate_policy call: a policy is loaded afresh for each (it may have
    #            been retrained in the same folder since a pooled worker last loaded it)


def _run_batch(work: _Work) -> list[Episode]:
    from kalm.envs.registry import get_env, make_env

    factory, tasks, seed, init_region = work.policy, work.tasks, work.seed, work.init_region
    env_key = f"{work.env}|{init_region}"
    if _WORKER.get("env_key") != env_key:
        _WORKER.clear()
        definition = get_env(work.env)  # workers look the env up again from its string
        _WORKER.update(env_key=env_key, definition=definition,
                       envs=[make_env(definition, init_region)])
    key = f"{work.call}|{factory!r}|{seed}"
    if _WORKER.get("key") != key:
        _WORKER.pop("policy", None)  # drop the previous policy first
        definition = _WORKER["definition"]
        _WORKER["policy"] = (definition.policy(factory, seed) if isinstance(factory, str)
                             else factory())
        _WORKER["key"] = key
    envs, policy, vector_envs = _WORKER["envs"], _WORKER["policy"], work.vector_envs
    if callable(getattr(policy, "prepare", None)):
        # embeddings etc. for the whole evaluation in one go, the same on every path
        policy.prepare(work.instructions)
    if vector_envs > 1 and can_act_batch(policy):
        width = min(vector_envs, len(tasks))
        while len(envs) < width:
            envs.append(make_env(_WORKER["definition"], init_region))
        return run_episodes(envs[:width], policy, [
            EpisodeTask(t.entry.goal, t.entry.instruction, t.seed, t.entry.init)
            for t in tasks])
    out = []
    for t in tasks:
        if hasattr(policy, "rng"):
            policy.rng = np.random.default_rng(t.seed + 1)
        ep = run_episode(envs[0], policy, t.entry.goal, t.entry.instruction, seed=t.seed,
                         init=t.entry.init)
        out.append(ep)
    return out


def evaluate_policy(
    policy: PolicyFactory | str,
    suite: GoalSuite,
    episodes: int,
    seed: int = 0,
    workers: int = 1,
    init_region: str = "paper",
    progress: bool = True,
    name: str | None = None,
    env: str = "clevr",
    vector_envs: int = VECTOR_ENVS,
) -> EvalResult:
    """Success per level in `env`. `policy` is a built-in policy name of the env or a picklable
    zero-argument factory. `vector_envs` > 1 steps that many envs per worker with batched
    forward passes when the policy has `act_batch` (1: one episode at a time); the episodes
    are the same either way."""
    from kalm.envs.registry import env_kwargs, get_env

    if episodes < 1:
        raise ValueError("episodes must be at least 1")
    definition = get_env(env)  # fail early on a bad env string or option
    env_kwargs(definition, init_region)
    if isinstance(policy, str):
        definition.policy(policy, seed)
    if vector_envs < 1:
        raise ValueError("vector_envs must be at least 1")
    tasks = plan_episodes(suite, episodes, seed)
    # work items: enough episodes to keep `vector_envs` envs busy, few enough to share them
    # out over the workers
    batch = max(10, min(4 * vector_envs, -(-len(tasks) // max(1, workers))))
    batches = [tasks[i : i + batch] for i in range(0, len(tasks), batch)]
    levels: dict[str, LevelResult] = {lvl: LevelResult() for lvl in suite.levels}
    all_eps: list[Episode] = []
    bar = tqdm(total=len(tasks), desc="evaluate", unit="ep", disable=not progress)
    instructions = tuple(sorted({t.entry.instruction for t in tasks}))
    call = uuid.uuid4().hex
    work = (_Work(policy, b, seed, init_region, env, vector_envs, instructions, call)
            for b in batches)
    results = imap_ordered(_run_batch, work, workers, persistent=True)
    for b, eps in zip(batches, results, strict=True):
        for t, ep in zip(b, eps, strict=True):
            levels[t.level].add(ep.success, ep.length, goal_task(t.entry.goal))
            ep.extras["level"] = t.level
            all_eps.append(ep)
        bar.update(len(b))
    bar.close()
    label = name or (policy if isinstance(policy, str) else getattr(policy, "__name__", "policy"))
    return EvalResult(policy=str(label), seed=seed, levels=levels, episodes=all_eps)
