"""Imagination that plans: the cross-entropy method over action sequences on the dynamics
ensemble, with the grounded LLM's proposals as its prior.

Why: sampling the LLM (best-of-8) and random shooting both only *draw* action sequences and
keep what the ensemble confirms; neither improves a sequence that nearly works, so goals that
need 5-19 pushes are never reached. The planner keeps a distribution over sequences (a
categorical per step over discrete actions, a clipped Gaussian per step over continuous ones),
scores every candidate on each ensemble member's own rollout, refits the distribution to the
best (elite) candidates and repeats. The prior decides where the search starts:

- `uniform`: no LLM; the reference that shows what search alone does;
- `llm`: per step, the actions the grounded LLM chose in its proposals for the task (its
  greedy rollout and its samples at temperature 1, so their frequencies estimate the model's
  own action probabilities), mixed with the uniform distribution (`llm_weight`), and the
  proposals themselves enter the first population as candidates. The LLM can only add: a
  proposal that scores worse than a sampled candidate is simply not an elite.

A candidate's rank rests on the members' own rollouts (what the label stage's votes judge):
a candidate whose rollouts reach the goal in at least `min_votes` members by step t ranks
above every one that does not, sooner better; below that, by progress: the mean over members
of the env's `goal_distance` at the closest step (dense; without the hook, the env's own
return), minus a penalty on the members' disagreement and on transitions the env's
`batch_plausible` rules out. Search finds the model's errors: on CLEVR's hard goals (20 dev
tasks) plain search kept 19 rollouts of which 1 was right on replay, its states full of
balls inside each other. A member's success therefore counts only over possible transitions,
and the env's `project_state` (CLEVR: overlapping balls moved apart as the contact would) is
applied after every predicted step (`project`). Search stops early once a candidate is kept
(after `polish` more iterations to shorten it). The chosen sequence is then labelled exactly
as the label stage labels an LLM rollout (`relabel.label_resimulated` on the members' mean),
so every stage after this one reads the output as it reads KALM's.

The simulator is used only for the replay diagnostic, recorded and never used to choose.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from tqdm import tqdm

from kalm.config import settings_from_text
from kalm.data.episodes import Episode, EpisodeData, read_episodes
from kalm.envs.base import EnvDefinition
from kalm.envs.registry import make_env
from kalm.imagination.labelling import write_label_folder
from kalm.imagination.quality import record_replay
from kalm.imagination.relabel import (
    Dynamics,
    RelabelConfig,
    first_proposals,
    label_resimulated,
    member_rollouts,
)

PRIORS = ("uniform", "llm")


@dataclass
class PlannerConfig:
    prior: str = "uniform"  # where the search starts: `uniform` (no LLM) or `llm` (its proposals)
    candidates: int = 500  # action sequences scored per iteration
    iterations: int = 5  # refits of the distribution at most (early exit at a kept success)
    elite_frac: float = 0.05  # the best share of a population the distribution is refitted to
    horizon: int = 20  # actions per candidate at most; a goal's own step limit caps it further
    smoothing: float = 0.2  # weight of the old distribution in each refit
    floor: float = 0.02  # share of uniform mixed into every refit (discrete): no action dies out
    min_std: float = 0.05  # continuous: the smallest std, as a share of the action range
    llm_weight: float = 0.5  # llm prior: share of each step's distribution on the LLM's actions
    disagreement: float = 0.5  # penalty per unit of the members' spread (state units)
    # votes are counted on the members' states pushed this many times further from their mean:
    # the members agree more than the simulator agrees with them (their spread underestimates
    # the real error), so a success must hold with that margin to count (1 = as they are)
    spread_scale: float = 1.0
    # the env's `project_state` after every predicted step (CLEVR: overlapping balls moved
    # apart), where the env has one and the model takes it (a DynamicsEnsemble)
    project: bool = True
    verify: int = 16  # confirmed candidates re-simulated on the members' mean at most
    # iterations after the first kept success, to shorten it (sooner successes rest on fewer
    # steps of the model's error); 0 stops at the first (early exit)
    polish: int = 1
    seed: int = 0
    chunk: int = 4096  # candidates rolled out per ensemble call (memory)

    def __post_init__(self) -> None:
        if self.prior not in PRIORS:
            raise ValueError(f"planner prior must be one of {', '.join(PRIORS)}, got "
                             f"{self.prior!r}")
        for name in ("candidates", "iterations", "horizon", "verify", "chunk"):
            if getattr(self, name) < 1:
                raise ValueError(f"planner {name} must be >= 1, got {getattr(self, name)}")
        if self.polish < 0:
            raise ValueError(f"planner polish must be >= 0, got {self.polish}")
        for name in ("elite_frac", "smoothing", "floor", "llm_weight"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"planner {name} must lie in [0, 1], got {getattr(self, name)}")
        if self.elite_frac == 0.0:
            raise ValueError("planner elite_frac must be > 0")
        if self.spread_scale < 1.0:
            raise ValueError(f"planner spread_scale must be >= 1, got {self.spread_scale}")
        if self.min_std <= 0 or self.disagreement < 0:
            raise ValueError(f"planner min_std must be > 0 and disagreement >= 0, got {self}")

    @property
    def elites(self) -> int:
        return max(2, round(self.candidates * self.elite_frac))


def planner_settings(text: str) -> dict[str, Any]:
    """`key=value,key=value` (a command line's planner settings) as PlannerConfig fields."""
    return settings_from_text(PlannerConfig, text, "planner setting")


# ----------------------------------------------------------------------------- distributions

class Categorical:
    """Independent categoricals per step over `n` discrete actions (offset `start`)."""

    def __init__(self, probs: np.ndarray, start: int = 0) -> None:
        self.probs = np.asarray(probs, dtype=np.float64)
        self.start = int(start)

    @classmethod
    def uniform(cls, horizon: int, n: int, start: int = 0) -> Categorical:
        return cls(np.full((horizon, n), 1.0 / n), start)

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        cum = np.cumsum(self.probs, axis=1)
        cum[:, -1] = 1.0
        u = rng.random((n, len(self.probs), 1))
        return self.start + (u > cum[None]).sum(-1)

    def refit(self, elites: np.ndarray, smoothing: float, floor: float) -> None:
        h, n = self.probs.shape
        counts = np.zeros((h, n))
        for t in range(h):
            counts[t] = np.bincount(elites[:, t] - self.start, minlength=n)[:n]
        fitted = counts / len(elites)
        probs = (1.0 - smoothing) * fitted + smoothing * self.probs
        self.probs = (1.0 - floor) * probs + floor / n


class Gaussian:
    """Independent Gaussians per step and action dimension, samples clipped to the bounds."""

    def __init__(self, mean: np.ndarray, std: np.ndarray, low: np.ndarray, high: np.ndarray,
                 min_std: float) -> None:
        self.mean, self.std = np.asarray(mean, np.float64), np.asarray(std, np.float64)
        self.low, self.high = np.asarray(low, np.float64), np.asarray(high, np.float64)
        self.min_std = min_std * (self.high - self.low)

    @classmethod
    def uniform(cls, horizon: int, low: np.ndarray, high: np.ndarray, min_std: float
                ) -> Gaussian:
        low, high = np.asarray(low, np.float64), np.asarray(high, np.float64)
        mean = np.broadcast_to((low + high) / 2, (horizon, len(low))).copy()
        std = np.broadcast_to((high - low) / 2, (horizon, len(low))).copy()
        return cls(mean, std, low, high, min_std)

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        x = self.mean[None] + self.std[None] * rng.standard_normal((n, *self.mean.shape))
        return np.clip(x, self.low, self.high).astype(np.float32)

    def refit(self, elites: np.ndarray, smoothing: float, floor: float) -> None:
        del floor  # the std floor plays its part
        e = np.asarray(elites, np.float64)
        self.mean = (1.0 - smoothing) * e.mean(0) + smoothing * self.mean
        self.std = np.maximum((1.0 - smoothing) * e.std(0) + smoothing * self.std, self.min_std)


Distribution = Categorical | Gaussian


def uniform_prior(space: gym.Space, horizon: int, cfg: PlannerConfig) -> Distribution:
    if isinstance(space, gym.spaces.Discrete):
        return Categorical.uniform(horizon, int(space.n), int(space.start))
    if isinstance(space, gym.spaces.Box):
        return Gaussian.uniform(horizon, space.low.reshape(-1), space.high.reshape(-1),
                                cfg.min_std)
    raise TypeError(f"no planner for {type(space).__name__} action spaces")


def llm_prior(space: gym.Space, horizon: int, proposals: Sequence[np.ndarray],
              cfg: PlannerConfig) -> Distribution:
    """The uniform prior moved towards the LLM's proposals for the task, per step: `llm_weight`
    of the mass on the proposals' action frequencies (discrete), or the mean shifted to their
    mean and the std shrunk towards their spread (continuous); steps no proposal reaches stay
    uniform."""
    dist = uniform_prior(space, horizon, cfg)
    w = cfg.llm_weight
    for t in range(horizon):
        acts = [np.asarray(p)[t] for p in proposals if len(p) > t]
        if not acts:
            continue
        if isinstance(dist, Categorical):
            n = dist.probs.shape[1]
            freq = np.bincount(np.asarray(acts, np.int64) - dist.start, minlength=n)[:n]
            dist.probs[t] = w * freq / len(acts) + (1.0 - w) * dist.probs[t]
        else:
            a = np.asarray(acts, np.float64).reshape(len(acts), -1)
            dist.mean[t] = w * a.mean(0) + (1.0 - w) * dist.mean[t]
            spread = np.maximum(a.std(0), dist.min_std)
            dist.std[t] = w * spread + (1.0 - w) * dist.std[t]
    return dist


def pad_proposals(proposals: Sequence[np.ndarray], horizon: int, dist: Distribution,
                  rng: np.random.Generator) -> np.ndarray:
    """The proposals as full-length candidates: cut to the horizon, the steps after a
    proposal's end drawn from DIST (they follow its own success, so they are rarely read)."""
    out = dist.sample(len(proposals), rng)
    for i, p in enumerate(proposals):
        p = np.asarray(p)[:horizon]
        out[i, : len(p)] = p.reshape(out[i, : len(p)].shape)
    return out


# ----------------------------------------------------------------------------- scoring

@dataclass
class Scores:
    confirmed: np.ndarray  # (N,) bool: at least min_votes members reach the goal
    step: np.ndarray  # (N,) the confirmed success step (else the horizon)
    progress: np.ndarray  # (N,) higher is better: closeness to the goal, less disagreement

    def order(self) -> np.ndarray:
        """Best first: confirmed before not, then the sooner success, then more progress."""
        return np.lexsort((-self.progress, self.step, ~self.confirmed))


def score_candidates(definition: EnvDefinition, goal: dict[str, Any], members: np.ndarray,
                     actions: np.ndarray, min_votes: int, disagreement: float,
                     spread_scale: float = 1.0) -> Scores:
    """Scores of N candidates from their members' own rollouts MEMBERS (K, N, H+1, obs).
    Progress is minus the members' mean `goal_distance` at their closest step (a member that
    reached the goal counts 0 from then on) where the env has the hook, else the members' mean
    return up to their own success (the env's rewards: what the labels will pay)."""
    k, n, h1, obs = members.shape
    h = h1 - 1
    if spread_scale != 1.0:
        centre = members.mean(0, keepdims=True)
        members = centre + spread_scale * (members - centre)
    flat_states = members.reshape(k * n, h1, obs)
    flat_actions = np.concatenate([actions] * k)
    hits = definition.success_grid(goal, flat_states, flat_actions).reshape(k, n, h)
    # a member's success counts only when every transition up to it is physically possible
    # (the env's `batch_plausible`): a learned model lets objects pass through each other, and
    # search finds exactly those states unless they are ruled out
    possible = np.cumprod(definition.plausible_grid(flat_states, flat_actions), axis=-1,
                          dtype=bool).reshape(k, n, h)
    hits = hits & possible
    first = np.where(hits.any(-1), hits.argmax(-1), h)  # (K, N); h = never
    votes = (first[:, :, None] <= np.arange(h)[None, None]).sum(0)  # (N, H) done by step t
    confirmed = (votes >= min_votes).any(-1)
    step = np.where(confirmed, (votes >= min_votes).argmax(-1), h)
    if definition.goal_distance is not None:
        distance = definition.distance_grid(goal, flat_states).reshape(k, n, h1)
        reached = np.zeros((k, n, h1), bool)
        reached[:, :, 1:] = np.cumsum(hits, axis=-1) > 0
        mean_distance = np.where(reached, 0.0, distance).mean(0)  # (N, H+1)
        closest = mean_distance.argmin(-1)
        progress = -mean_distance[np.arange(n), closest]
    else:
        returns = np.zeros((k, n))
        for j in range(k * n):
            m, i = divmod(j, n)
            end = int(first[m, i]) + 1 if first[m, i] < h else h
            rewards, _ = definition.labels(goal, flat_states[j, : end + 1], actions[i, :end])
            returns[m, i] = float(np.sum(rewards))
        progress = returns.mean(0)
        closest = np.full(n, h)
    # disagreement up to the step the verdict rests on
    spread = np.sqrt(((members - members.mean(0, keepdims=True)) ** 2).mean(-1)).max(0)
    until = np.where(confirmed, step + 1, np.maximum(closest, 1))
    mask = np.arange(h1)[None] <= until[:, None]
    progress = progress - disagreement * (spread * mask).sum(-1) / mask.sum(-1)
    # and each impossible transition before that step costs as much as a unit of distance
    impossible = (~possible).mean(0)  # (N, H) share of members past an impossible step
    progress = progress - (impossible * mask[:, 1:]).sum(-1)
    return Scores(confirmed, step, progress)


# ----------------------------------------------------------------------------- one task

@dataclass
class PlanResult:
    actions: np.ndarray
    states: np.ndarray  # (T+1, obs) the members' mean rollout
    uncertainty: np.ndarray  # (T,)
    members: np.ndarray | None  # (K, T+1, obs)
    iterations: int
    candidates: int
    confirmed: bool


def _members_of(dynamics: Dynamics, s0: np.ndarray, actions: np.ndarray, chunk: int
                ) -> np.ndarray:
    starts = np.repeat(np.asarray(s0, np.float32)[None], len(actions), axis=0)
    parts = []
    for lo in range(0, len(actions), chunk):
        m = member_rollouts(dynamics, starts[lo : lo + chunk], actions[lo : lo + chunk])
        if m is None:
            raise ValueError("the planner scores each member's own rollout: it needs a "
                             "dynamics model with members (a DynamicsEnsemble)")
        parts.append(m)
    return np.concatenate(parts, axis=1)


def plan_task(definition: EnvDefinition, goal: dict[str, Any], s0: np.ndarray,
              dynamics: Dynamics, space: gym.Space, cfg: PlannerConfig, judge: RelabelConfig,
              rng: np.random.Generator, proposals: Sequence[np.ndarray] = ()) -> PlanResult:
    """Search one task's action sequence; PROPOSALS (the LLM's, for the `llm` prior) shape the
    first distribution and join the first population."""
    horizon = max(1, min(cfg.horizon, int(definition.max_steps(goal))))
    if cfg.prior == "llm" and len(proposals):
        dist = llm_prior(space, horizon, proposals, cfg)
    else:
        dist = uniform_prior(space, horizon, cfg)
    s0 = np.asarray(s0, np.float32)
    best_actions: np.ndarray | None = None
    tried = 0
    chosen: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None] | None = None
    iteration = polished = 0
    for iteration in range(1, cfg.iterations + 1):
        acts = dist.sample(cfg.candidates, rng)
        if iteration == 1 and cfg.prior == "llm" and len(proposals):
            injected = pad_proposals(proposals, horizon, dist, rng)[: cfg.candidates]
            acts[: len(injected)] = injected
        if best_actions is not None:  # the previous elites compete again (never lost)
            acts = np.concatenate([best_actions, acts])
        members = _members_of(dynamics, s0, acts, cfg.chunk)
        tried += len(acts)
        # every member must agree unless the label stage asks for fewer votes
        min_votes = judge.min_votes if judge.min_votes is not None else len(members)
        s = score_candidates(definition, goal, members, acts, min_votes, cfg.disagreement,
                             cfg.spread_scale)
        order = s.order()
        elite = order[: cfg.elites]
        best_actions = acts[elite]
        confirmed = [i for i in order[: cfg.verify] if s.confirmed[i]]
        found = _verified(definition, goal, s0, dynamics, acts, confirmed, members, judge)
        if found is not None:
            chosen = found  # the best kept so far (the elites carry it into the next round)
            polished += 1
            if polished > cfg.polish:
                break
        dist.refit(best_actions, cfg.smoothing, cfg.floor)
    assert best_actions is not None
    confirmed = chosen is not None
    if chosen is None:  # no confirmed success: the best candidate, labelled as it stands
        a = best_actions[0]
        states, u = dynamics.rollout(s0[None], a[None])
        m = member_rollouts(dynamics, s0[None], a[None])
        chosen = (a, states[0], u[0], None if m is None else m[:, 0])
    a, states, u, m = chosen
    return PlanResult(a, states, u, m, iteration, tried, confirmed)


def _success(definition: EnvDefinition, goal: dict[str, Any], states: np.ndarray,
             actions: np.ndarray, members: np.ndarray | None, judge: RelabelConfig) -> bool:
    probe = Episode(states, actions, np.zeros(len(actions), np.float32),
                    np.zeros(len(actions), bool), "", goal)
    return bool(label_resimulated(probe, states, np.zeros(len(actions), np.float32),
                                  definition, RelabelConfig(min_votes=judge.min_votes),
                                  members).extras["ensemble_success"])


def _verified(definition: EnvDefinition, goal: dict[str, Any], s0: np.ndarray,
              dynamics: Dynamics, acts: np.ndarray, candidates: list[int],
              members: np.ndarray, judge: RelabelConfig
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """The first of CANDIDATES (best first) that the label stage's rule keeps on the members'
    mean rollout, with that rollout; None when none is kept."""
    if not candidates:
        return None
    idx = np.asarray(candidates)
    starts = np.repeat(s0[None], len(idx), axis=0)
    states, u = dynamics.rollout(starts, acts[idx])
    possible = np.cumprod(definition.plausible_grid(states, acts[idx]), axis=-1, dtype=bool)
    for j, i in enumerate(idx):
        if _success(definition, goal, states[j], acts[i], members[:, i], judge):
            end = definition.first_success(goal, states[j], acts[i])
            if end is not None and possible[j, end]:  # the mean rollout is possible too
                return acts[i], states[j], u[j], members[:, i]
    return None


# ----------------------------------------------------------------------------- a level

def projected(dynamics: Dynamics, definition: EnvDefinition, cfg: PlannerConfig) -> Dynamics:
    """DYNAMICS with the env's `project_state` after every step, where asked and possible."""
    if not cfg.project or definition.project_state is None:
        return dynamics
    with_projection = getattr(dynamics, "with_projection", None)
    return dynamics if with_projection is None else with_projection(definition.project_state)


def proposals_by_task(imagined: EpisodeData) -> dict[int, list[np.ndarray]]:
    """The LLM's action sequences per task of an imagine file (every proposal of best-of-N)."""
    index = imagined.extras.get("task_index")
    out: dict[int, list[np.ndarray]] = {}
    for i in range(len(imagined)):
        task = int(index[i]) if index is not None else i
        out.setdefault(task, []).append(np.asarray(imagined.episode(i).actions))
    return out


def plan(tasks: EpisodeData | Sequence[Episode], dynamics: Dynamics, definition: EnvDefinition,
         cfg: PlannerConfig | None = None, proposals: dict[int, list[np.ndarray]] | None = None,
         judge: RelabelConfig | None = None, progress: bool = True, replay: bool = True,
         usage: dict[str, float] | None = None) -> list[Episode]:
    """One planned rollout per episode of TASKS (its goal, instruction and initial state; an
    episode file or `stage.task_starts`' zero-step episodes), the LLM's PROPOSALS (task index
    -> action sequences) as the `llm` prior. USAGE receives the CPU-seconds the planning took
    (the replay diagnostic not counted) and candidates scored."""
    cfg = cfg or PlannerConfig()
    judge = judge or RelabelConfig()
    if cfg.prior == "llm" and not proposals:
        raise ValueError("the llm prior plans from the LLM's proposals; none were given (an "
                         "imagine stage's file holds them)")
    rng = np.random.default_rng(cfg.seed)
    dynamics = projected(dynamics, definition, cfg)
    env = make_env(definition)
    templates = tasks.episodes() if isinstance(tasks, EpisodeData) else list(tasks)
    out: list[Episode] = []
    spent, tried = 0.0, 0
    try:
        for i, template in enumerate(tqdm(templates, desc=f"plan ({cfg.prior} prior)",
                                          unit="task", disable=not progress)):
            t0 = time.process_time()
            goal, s0 = dict(template.goal), np.asarray(template.observations[0], np.float32)
            task = int(template.extras.get("task_index", i))
            own = (proposals or {}).get(task, [])
            result = plan_task(definition, goal, s0, dynamics, env.action_space, cfg, judge,
                               rng, own)
            proposal = Episode(result.states, result.actions,
                               np.zeros(len(result.actions), np.float32),
                               np.zeros(len(result.actions), bool), template.instruction, goal,
                               extras={"level": str(template.extras.get("level", "")),
                                       "proposer": f"planner ({cfg.prior} prior)",
                                       "candidates": result.candidates,
                                       "iterations": result.iterations,
                                       "task_index": task})
            ep = label_resimulated(proposal, result.states, result.uncertainty, definition,
                                   judge, result.members)
            spent += time.process_time() - t0
            tried += result.candidates
            if replay:  # a diagnostic, outside the compute the row is charged
                record_replay(definition, env, ep, s0)
            out.append(ep)
    finally:
        env.close()
    if usage is not None:
        usage.update(cpu_seconds=spent, candidates=tried)
    return out


def plan_level(imagined: str | Path, out_dir: str | Path, dynamics: Dynamics,
               definition: EnvDefinition, cfg: PlannerConfig | None = None,
               progress: bool = True, judge: RelabelConfig | None = None) -> dict[str, Any]:
    """Plan one rollout for each task of IMAGINED (its first proposal's goal and start; all its
    proposals as the `llm` prior) into OUT_DIR in the label stage's layout."""
    cfg = cfg or PlannerConfig()
    imagined = Path(imagined)
    data = read_episodes(imagined)
    return plan_into(first_proposals(data), out_dir, dynamics, definition, cfg, progress, judge,
                     proposals_by_task(data) if cfg.prior == "llm" else None, imagined.name)


def plan_into(tasks: EpisodeData | Sequence[Episode], out_dir: str | Path, dynamics: Dynamics,
              definition: EnvDefinition, cfg: PlannerConfig | None = None,
              progress: bool = True, judge: RelabelConfig | None = None,
              proposals: dict[int, list[np.ndarray]] | None = None, source: str = "",
              env: str | None = None) -> dict[str, Any]:
    """Plan one rollout per task of TASKS into OUT_DIR in the label stage's layout (SOURCE:
    where the tasks came from, for the stats). ENV: the env string a task list's file is to
    carry (a run's `env`, which finds the definition again; an episode file has its own)."""
    cfg = cfg or PlannerConfig()
    judge = judge or RelabelConfig()
    out_dir = Path(out_dir)
    spec = tasks.spec if isinstance(tasks, EpisodeData) else definition.episode_spec(env)
    t0 = time.perf_counter()
    usage: dict[str, float] = {}
    episodes = plan(tasks, dynamics, definition, cfg, proposals, judge, progress, usage=usage)
    seconds = time.perf_counter() - t0
    kept = sum(bool(e.extras["ensemble_success"]) for e in episodes)
    name = f"planner ({cfg.prior} prior)"
    attrs = {"proposer": name, **{f"planner_{k}": v for k, v in asdict(cfg).items()}}
    return write_label_folder(out_dir, spec, episodes, episodes, "ensemble_success", attrs,
                              {"labeller": "ensemble", "proposer": name, "config": asdict(cfg),
                               "judge": asdict(judge), "source": source,
                               "tasks": len(tasks), "seconds": seconds,
                               "cpu_seconds": usage["cpu_seconds"],
                               "candidates_tried": int(usage["candidates"]),
                               "cpu_seconds_per_kept": (usage["cpu_seconds"] / kept
                                                        if kept else None)})


__all__ = ["PRIORS", "Categorical", "Gaussian", "PlannerConfig", "llm_prior", "plan",
           "plan_into", "plan_level", "plan_task", "planner_settings", "proposals_by_task",
           "score_candidates", "uniform_prior"]
