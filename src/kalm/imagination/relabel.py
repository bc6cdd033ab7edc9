"""Relabel imagined rollouts on a learned dynamics ensemble instead of the LLM's own states.

The grounded LLM labels its rollouts on the states it predicted: when those states drift into the
goal, a rollout whose actions would not reach it enters the RL data as a success. Here the
imagined action sequence is re-simulated from its s_0 through a dynamics ensemble fitted on the
real transitions, and success, rewards and terminals come from the env's own functions
(`definition.labels`) on the ensemble's states, as they do for the LLM's states in imagination:
success at the first step where the goal holds (the episode ends there, terminal), else a
timeout at the end of the actions. The simulator is never asked.

Options (all off by default): a MOPO-style penalty `r_t - lam * u_t` with u_t the ensemble's
disagreement on step t; truncation before the first step whose u_t exceeds a threshold (the
ensemble does not know what happens there, so the episode ends as a timeout, never a terminal);
and `min_votes`: the verdict on the members' mean rollout must also be reached by at least that
many members rolling the actions out on their own (a mean of K wrong futures can meet a goal
none of them meets; `ensemble_votes` is stored either way).

`judge_quality` measures any "judged successful" signal (the LLM's `self_success`, the
ensemble's verdict, a score) against the simulator diagnostic `replay_success` that `kalm
imagine` stores: precision, recall, AUROC and the share of rollouts the signal keeps.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from kalm.data.episodes import Episode, EpisodeData, read_episodes, write_episodes
from kalm.envs.base import EnvDefinition
from kalm.envs.registry import get_env

EXTRA_KEYS = ("ensemble_success", "ensemble_uncertainty_mean", "ensemble_uncertainty_max",
              "ensemble_truncated", "ensemble_steps", "ensemble_votes")


class Dynamics(Protocol):
    """What relabelling needs of a dynamics model (DynamicsEnsemble, or a stub in tests)."""

    def rollout(self, s0: np.ndarray, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Open-loop states (T+1, obs) and per-step uncertainty (T,); with a leading batch
        dimension on both arguments, (B, T+1, obs) and (B, T)."""
        ...


@dataclass(frozen=True)
class RelabelConfig:
    penalty: float = 0.0  # lam of r_t - lam * u_t; 0 = off
    max_uncertainty: float | None = None  # truncate before the first step above it; None = off
    min_votes: int | None = None  # members whose own rollout must reach the goal too; None = off

    def __post_init__(self) -> None:
        if self.penalty < 0:
            raise ValueError(f"penalty must be >= 0, got {self.penalty}")
        if self.min_votes is not None and self.min_votes < 1:
            raise ValueError(f"min_votes must be >= 1, got {self.min_votes}")
        if self.max_uncertainty is not None and self.max_uncertainty < 0:
            raise ValueError(f"max_uncertainty must be >= 0, got {self.max_uncertainty}")


def member_rollouts(dynamics: Dynamics, s0: np.ndarray, actions: np.ndarray
                    ) -> np.ndarray | None:
    """Each member's own rollouts (K, B, T+1, obs) when the model has members (a
    DynamicsEnsemble does; a single model or a stub does not: None, and no votes)."""
    fn = getattr(dynamics, "member_rollouts", None)
    return None if fn is None else fn(s0, actions)


def _check_dynamics(dynamics: Dynamics, definition: EnvDefinition) -> None:
    spec = getattr(dynamics, "spec", None)
    if spec is None:
        return
    mine, theirs = definition.spec, spec
    for k in ("obs_dim", "action_type", "action_dim"):
        if getattr(theirs, k) != getattr(mine, k):
            raise ValueError(f"the dynamics model was fitted for {k}={getattr(theirs, k)!r}, "
                             f"env {definition.name!r} has {k}={getattr(mine, k)!r}")


def count_votes(definition: EnvDefinition, goal: dict[str, Any], member_states: np.ndarray,
                actions: np.ndarray) -> int:
    """How many members' own rollouts (K, T+1, obs) meet the goal within ACTIONS."""
    return sum(definition.first_success(goal, m, actions) is not None for m in member_states)


def label_resimulated(episode: Episode, states: np.ndarray, uncertainty: np.ndarray,
                      definition: EnvDefinition, cfg: RelabelConfig = RelabelConfig(),
                      member_states: np.ndarray | None = None) -> Episode:
    """The episode's actions on re-simulated `states` (T+1, obs) with per-step `uncertainty`
    (T,): cut at the first success (terminal) or the first untrusted step (timeout), labelled
    with the env's own functions. `member_states` (K, T+1, obs), each member's own rollout,
    give the votes (over the steps the verdict rests on); without them there are no votes and
    `cfg.min_votes` cannot be met. May return a 0-step episode (the first step is untrusted)."""
    actions = np.asarray(episode.actions)
    n = len(actions)
    states = np.asarray(states, dtype=np.float32)[: n + 1]
    u = np.asarray(uncertainty, dtype=np.float32)[:n]
    goal = episode.goal
    success_at = definition.first_success(goal, states, actions)
    judged = n if success_at is None else success_at + 1  # steps the verdict rests on
    votes = (None if member_states is None
             else count_votes(definition, goal, np.asarray(member_states)[:, : judged + 1],
                              actions[:judged]))
    if cfg.min_votes is not None and member_states is None:
        raise ValueError("min_votes needs each member's own rollout (a DynamicsEnsemble)")
    over = (np.flatnonzero(u[:judged] > cfg.max_uncertainty)
            if cfg.max_uncertainty is not None else np.zeros(0, dtype=np.int64))
    truncated = len(over) > 0
    length = int(over[0]) if truncated else judged
    # too few members reach the goal: the success step is not trusted, like an uncertain one
    outvoted = (success_at is not None and not truncated and cfg.min_votes is not None
                and (votes or 0) < cfg.min_votes)
    if outvoted:
        length = success_at
    success = success_at is not None and not truncated and not outvoted
    if length:
        rewards, terminals = definition.labels(goal, states[: length + 1], actions[:length])
    else:
        rewards, terminals = np.zeros(0, np.float32), np.zeros(0, bool)
    if cfg.penalty:
        rewards = (rewards - np.float32(cfg.penalty) * u[:length]).astype(np.float32)
    considered = u[:judged]
    extras = {**episode.extras,
              "ensemble_success": bool(success),
              "ensemble_uncertainty_mean": float(considered.mean()) if judged else 0.0,
              "ensemble_uncertainty_max": float(considered.max()) if judged else 0.0,
              "ensemble_truncated": bool(truncated or outvoted),
              "ensemble_steps": int(length),
              **({} if votes is None else {"ensemble_votes": int(votes)})}
    return Episode(states[: length + 1].copy(), actions[:length].copy(),
                   np.asarray(rewards, np.float32), np.asarray(terminals, bool),
                   episode.instruction, dict(goal), extras=extras,
                   successes=np.asarray(terminals, bool).copy())


def relabel_episode(episode: Episode, dynamics: Dynamics, definition: EnvDefinition,
                    cfg: RelabelConfig = RelabelConfig()) -> Episode:
    """Re-simulate one imagined episode's actions from its s_0 and relabel it (see
    `label_resimulated`)."""
    _check_dynamics(dynamics, definition)
    states, u = dynamics.rollout(np.asarray(episode.observations[0]),
                                 np.asarray(episode.actions))
    return label_resimulated(episode, states, u, definition, cfg)


@dataclass
class RelabelStats:
    episodes: int
    kept: int  # with at least one trusted step
    dropped_untrusted: int  # whose first step was already over the threshold
    # over the kept episodes:
    self_success: int | None  # the LLM's verdicts, when the file has them
    ensemble_success: int
    agree: int | None  # both verdicts equal
    truncated: int  # cut before an untrusted step
    config: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def relabel(data: EpisodeData, dynamics: Dynamics, definition: EnvDefinition,
            cfg: RelabelConfig = RelabelConfig(), batch_size: int = 4096,
            ) -> tuple[list[Episode], RelabelStats]:
    """Relabel every imagined episode of `data` (re-simulated in batches); episodes left
    without a trusted step are dropped (counted in the stats). Returns the relabelled episodes,
    each with its scores in extras, ready for `EpisodeData.from_episodes`."""
    if data.spec.obs_dim != definition.spec.obs_dim:
        raise ValueError(f"episodes have obs_dim={data.spec.obs_dim}, env "
                         f"{definition.name!r} has {definition.spec.obs_dim}")
    _check_dynamics(dynamics, definition)
    out: list[Episode] = []
    dropped = 0
    for lo in range(0, len(data), batch_size):
        idx = np.arange(lo, min(lo + batch_size, len(data)))
        t_max = int(data.lengths[idx].max())
        s0, acts = data.observations[idx, 0], data.actions[idx, :t_max]
        states, u = dynamics.rollout(s0, acts)
        members = member_rollouts(dynamics, s0, acts)
        for row, i in enumerate(idx):
            ep = label_resimulated(data.episode(int(i)), states[row], u[row], definition, cfg,
                                   None if members is None else members[:, row])
            if ep.length == 0:
                dropped += 1
                continue
            out.append(ep)
    self_ok = [bool(e.extras["self_success"]) for e in out if "self_success" in e.extras]
    has_self = bool(out) and len(self_ok) == len(out)
    ens_ok = [bool(e.extras["ensemble_success"]) for e in out]
    stats = RelabelStats(
        episodes=len(data), kept=len(out), dropped_untrusted=dropped,
        self_success=sum(self_ok) if has_self else None,
        ensemble_success=sum(ens_ok),
        agree=sum(a == b for a, b in zip(self_ok, ens_ok, strict=True)) if has_self else None,
        truncated=sum(bool(e.extras["ensemble_truncated"]) for e in out),
        config=asdict(cfg))
    return out, stats


def select_proposals(episodes: list[Episode], verdict_key: str) -> list[Episode]:
    """One rollout per task of a best-of-N file (`kalm imagine` with proposals > 1): among the
    task's proposals judged successful, the least uncertain on the ensemble (then the earliest
    proposal); when none is, the first proposal (greedy by default). A file of single
    proposals is returned as it is."""
    if not any(int(e.extras.get("proposal", 0)) for e in episodes):
        return episodes
    by_task: dict[int, list[Episode]] = {}
    for e in episodes:
        by_task.setdefault(int(e.extras["task_index"]), []).append(e)
    chosen = []
    for task in sorted(by_task):
        proposals = sorted(by_task[task], key=lambda e: int(e.extras["proposal"]))
        verified = [e for e in proposals if e.extras[verdict_key]]
        if verified:
            chosen.append(min(verified, key=lambda e: (
                float(e.extras.get("ensemble_uncertainty_mean", 0.0)),
                int(e.extras["proposal"]))))
        else:
            chosen.append(proposals[0])
    return chosen


def first_proposals(tasks: EpisodeData) -> EpisodeData:
    """One row per task of an imagine file: a best-of-N file holds N proposals per task, of
    which the first (greedy by default) is what the paper decodes for a prompt."""
    proposals = tasks.extras.get("proposal")
    if proposals is None:
        return tasks
    keep = np.flatnonzero(np.asarray(proposals) == 0)
    return tasks if len(keep) == len(tasks) else tasks.subset(keep)


def write_first_proposals(imagined: str | Path, out: str | Path) -> Path:
    """OUT: IMAGINED's first proposals (written atomically; kept while newer than IMAGINED),
    the paper's one greedy rollout per prompt with the LLM's own labels."""
    imagined, out = Path(imagined), Path(out)
    if out.exists() and out.stat().st_mtime_ns >= imagined.stat().st_mtime_ns:
        return out
    return write_episodes(first_proposals(read_episodes(imagined)), out)


KEEP = ("all", "success")


def relabel_file(path: str | Path, dynamics: Dynamics, out: str | Path,
                 cfg: RelabelConfig = RelabelConfig(),
                 definition: EnvDefinition | None = None, keep: str = "all",
                 ) -> tuple[RelabelStats, list[Episode]]:
    """Relabel an imagined episode file (of `kalm imagine`) into `out`, written atomically.

    `keep="success"` writes only the rollouts the ensemble judges successful: what an
    imitation learner (BC) should see, since it copies every action it is given; value-based
    learners can take them all, failures included. Returns the stats and every relabelled
    episode (also those not written), for judging the judge."""
    if keep not in KEEP:
        raise ValueError(f"keep must be one of {', '.join(KEEP)}, got {keep!r}")
    data = read_episodes(path)
    if data.source != "imagined":
        raise ValueError(f"{path}: relabelling is for imagined episodes, this file holds "
                         f"{data.source!r} ones")
    definition = definition or get_env(data.spec.env)
    relabelled, stats = relabel(data, dynamics, definition, cfg)
    relabelled = select_proposals(relabelled, "ensemble_success")  # one per task (best-of-N)
    episodes = (relabelled if keep == "all"
                else [e for e in relabelled if e.extras["ensemble_success"]])
    if not episodes:
        raise RuntimeError(f"{path}: no relabelled rollout is left to write (keep={keep!r}, "
                           f"max_uncertainty={cfg.max_uncertainty})")
    attrs = {**data.attrs, "relabelled": "dynamics-ensemble", "relabel_penalty": cfg.penalty,
             "relabel_keep": keep}
    if cfg.max_uncertainty is not None:
        attrs["relabel_max_uncertainty"] = cfg.max_uncertainty
    write_episodes(EpisodeData.from_episodes(episodes, data.spec, source="imagined",
                                             attrs=attrs), out)
    return stats, relabelled


# ---------------------------------------------------------------------- judging the judges
def auroc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """Area under the ROC curve (the probability that a random positive scores above a random
    negative, ties counting half); None when the labels are all one class."""
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(labels, dtype=bool).reshape(-1)
    pos, neg = int(y.sum()), int((~y).sum())
    if pos == 0 or neg == 0:
        return None
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), dtype=np.float64)
    sorted_s = s[order]
    i = 0
    while i < len(s):  # average ranks over ties
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[y].sum() - pos * (pos + 1) / 2) / (pos * neg))


@dataclass(frozen=True)
class JudgeQuality:
    """How well a "judged successful" signal predicts the simulator's replayed success."""

    n: int  # rollouts judged (those with a replay)
    positives: int  # replayed successes
    kept: int  # judged successful
    true_positives: int
    kept_share: float | None
    precision: float | None  # of the kept, the share that really succeed
    recall: float | None  # of the real successes, the share kept
    false_positive_rate: float | None  # of the real failures, the share kept
    auroc: float | None  # of the score (of the boolean verdict when no score was given)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def judge_quality(episodes: Sequence[Episode], judged: Sequence[bool] | np.ndarray | str,
                  score: Sequence[float] | np.ndarray | str | None = None,
                  truth_key: str = "replay_success") -> JudgeQuality:
    """Precision / recall / AUROC of `judged` (a per-episode boolean, or the extras key that
    holds it) against `extras[truth_key]`; `score` (values or an extras key) ranks for the
    AUROC, else the verdict itself does. Episodes `kalm imagine` could not replay
    (`extras["replayed"]` false) are left out."""
    def values(v: Sequence[Any] | np.ndarray | str) -> np.ndarray:
        if isinstance(v, str):
            return np.asarray([e.extras[v] for e in episodes])
        arr = np.asarray(v)
        if len(arr) != len(episodes):
            raise ValueError(f"{len(arr)} values for {len(episodes)} episodes")
        return arr

    use = np.asarray([bool(e.extras.get("replayed", True)) for e in episodes], dtype=bool)
    truth = np.asarray([bool(e.extras[truth_key]) for e in episodes], dtype=bool)[use]
    verdict = values(judged).astype(bool)[use]
    ranking = verdict.astype(np.float64) if score is None else \
        values(score).astype(np.float64)[use]
    n, kept = int(use.sum()), int(verdict.sum())
    tp = int((verdict & truth).sum())
    positives = int(truth.sum())
    return JudgeQuality(n=n, positives=positives, kept=kept, true_positives=tp,
                        kept_share=kept / n if n else None,
                        precision=tp / kept if kept else None,
                        recall=tp / positives if positives else None,
                        false_positive_rate=(kept - tp) / (n - positives) if n > positives
                        else None,
                        auroc=auroc(ranking, truth) if n else None)

