"""Label one level's imagined rollouts for RL, and write what each kind of learner should see.

Two labellers. `llm` is the paper's way: success, rewards and terminals on the states the grounded
model predicted (what `kalm imagine` already stored). `ensemble` re-simulates the imagined actions
through a dynamics ensemble fitted on the real transitions (`relabel.py`) and labels on its
states: the model's own states drift into the goal far more often than its actions reach it, and
those false successes are what made imagined data hurt
(docs/experiments/05-quick-pipeline-avx2-cpu.md).

A best-of-N file (several proposals per task) is reduced to one rollout per task first: a
proposal the labeller judges successful where there is one (`select_proposals`).

Two files per level, because the learners need different things: `labelled.h5` holds every
labelled rollout (a value-based learner such as CQL learns from failures too, and from the
penalty), `labelled-success.h5` only the ones the labeller judged successful (an imitation learner
such as BC copies every action it is given). The second file is absent when nothing was judged
successful; the stats say so and the pipeline trains no KALM policy on nothing.

`label_stats.json` counts rollouts generated, kept and judged successful, and, where `kalm
imagine` replayed the actions in the simulator, how often they really reached the goal and how
well each label predicts that (for the ensemble's rollouts, cut at its first success, on the
kept actions' own replay: `replay_kept_actions`). The replay is a diagnostic: it is read here to
be reported, never to label or to filter.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kalm.data.episodes import Episode, EpisodeData, read_episodes, write_episodes
from kalm.envs.base import EnvDefinition, EnvSpecInfo
from kalm.envs.registry import make_env
from kalm.imagination.quality import replay_actions
from kalm.imagination.relabel import (
    Dynamics,
    RelabelConfig,
    judge_quality,
    relabel,
    select_proposals,
)
from kalm.io import write_json

LABELLERS = ("ensemble", "llm")
ALL_FILE = "labelled.h5"
SUCCESS_FILE = "labelled-success.h5"
STATS_FILE = "label_stats.json"
KEEP_FILES = {"all": ALL_FILE, "success": SUCCESS_FILE}
VERDICT_KEY = {"ensemble": "ensemble_success", "llm": "self_success"}


@dataclass
class LabelConfig:
    """How imagined rollouts are labelled (`labeller: llm` with no penalty or truncation is the
    paper's method)."""

    labeller: str = "ensemble"
    penalty: float = 0.0  # MOPO-style r - penalty * ensemble disagreement (ensemble only)
    # truncate a rollout before the first step whose disagreement exceeds this quantile of the
    # disagreement on held-out real transitions (ensemble only); None: never truncate
    max_uncertainty_quantile: float | None = None
    # a success must also be reached by at least this many members rolling the actions out on
    # their own, not only by the members' mean (ensemble only); None: the mean decides
    min_votes: int | None = None

    def __post_init__(self) -> None:
        if self.labeller not in LABELLERS:
            raise ValueError(f"labeller must be one of {', '.join(LABELLERS)}, "
                             f"got {self.labeller!r}")
        if self.labeller == "llm" and (self.penalty or self.max_uncertainty_quantile is not None
                                       or self.min_votes is not None):
            raise ValueError("penalty, max_uncertainty_quantile and min_votes need the dynamics "
                             "ensemble (labeller: ensemble)")
        if self.min_votes is not None and self.min_votes < 1:
            raise ValueError(f"min_votes must be >= 1, got {self.min_votes}")
        if self.penalty < 0:
            raise ValueError(f"penalty must be >= 0, got {self.penalty}")
        q = self.max_uncertainty_quantile
        if q is not None and not 0.0 < q <= 1.0:
            raise ValueError(f"max_uncertainty_quantile must be in (0, 1], got {q}")

    @property
    def needs_dynamics(self) -> bool:
        return self.labeller == "ensemble"


def label_quality(episodes: list[Episode], key: str) -> dict[str, Any] | None:
    """`judge_quality` of the verdicts under KEY against the stored replay diagnostic; None
    when the rollouts were not replayed."""
    if not episodes or not all("replay_success" in e.extras and key in e.extras
                               for e in episodes):
        return None
    return judge_quality(episodes, key).to_json()


def _read_imagined(path: Path, what: str) -> EpisodeData:
    data = read_episodes(path)
    if data.source != "imagined":
        raise ValueError(f"{path}: {what} is for imagined episodes, this file holds "
                         f"{data.source!r} ones")
    return data


def label_level(imagined: str | Path, out_dir: str | Path, cfg: LabelConfig,
                definition: EnvDefinition, dynamics: Dynamics | None = None
                ) -> dict[str, Any]:
    """Label the rollouts of `imagined` into OUT_DIR (`labelled.h5`, `labelled-success.h5`,
    `label_stats.json`, each written atomically); returns the stats."""
    imagined, out_dir = Path(imagined), Path(out_dir)
    data = _read_imagined(imagined, "labelling")
    generated = data.episodes()
    if cfg.needs_dynamics:
        if dynamics is None:
            raise ValueError("labeller 'ensemble' needs a dynamics ensemble")
        limit = None
        if cfg.max_uncertainty_quantile is not None:
            limit = dynamics.uncertainty_quantile(cfg.max_uncertainty_quantile)  # type: ignore[attr-defined]
        members = getattr(dynamics, "config", None)
        if cfg.min_votes is not None and members is not None and \
                cfg.min_votes > members.members:
            raise ValueError(f"min_votes={cfg.min_votes} but the ensemble has "
                             f"{members.members} members")
        labelled, relabel_stats = relabel(data, dynamics, definition,
                                          RelabelConfig(cfg.penalty, limit, cfg.min_votes))
        attrs = {**data.attrs, "labeller": "ensemble", "relabel_penalty": cfg.penalty,
                 **({"relabel_max_uncertainty": limit} if limit is not None else {})}
        extra: dict[str, Any] = {"relabel": relabel_stats.to_json()}
    else:
        labelled, attrs, extra = generated, {**data.attrs, "labeller": "llm"}, {}
    verdict = VERDICT_KEY[cfg.labeller]
    labelled = select_proposals(labelled, verdict)
    if cfg.needs_dynamics:
        replay_kept_actions(definition, labelled)
    return write_label_folder(out_dir, data.spec, generated, labelled, verdict, attrs, {
        "labeller": cfg.labeller, "config": asdict(cfg), "source": imagined.name, **extra})


def replay_kept_actions(definition: EnvDefinition, episodes: list[Episode]) -> None:
    """A DIAGNOSTIC (uses the simulator; reported, never used to label or filter): `kalm
    imagine` replayed each rollout's whole action sequence, but the ensemble labeller ends a
    rollout at the first step its re-simulated states meet the goal, and the learner gets only
    the actions up to there. Whether those reach the goal is what the labeller's precision is
    about; the whole sequence's replay also counted the rollouts whose later actions undo the
    goal as wrong labels (on the quick run's rephrase level: 59 of 103 kept rollouts right,
    not 31; docs/experiments/10-clevr-quick-best-of-8.md). `replay_success` becomes the kept
    actions' replay, `replay_success_uncut` keeps the whole sequence's."""
    todo = [e for e in episodes
            if "replay_success" in e.extras and "replay_success_uncut" not in e.extras]
    for e in todo:  # every episode gets the key (one file, one set of extras)
        e.extras["replay_success_uncut"] = bool(e.extras["replay_success"])
    todo = [e for e in todo if e.extras.get("replayed", False)]
    if not todo:
        return
    env = make_env(definition)
    try:
        for e in todo:
            replayed = replay_actions(definition, env, e.goal, e.observations[0],
                                      np.asarray(e.actions))
            if replayed is None:  # this env cannot replay: the stored verdict stays
                return
            e.extras["replay_success"] = replayed[1]
    finally:
        env.close()


def verify_level(imagined: str | Path, out_dir: str | Path, definition: EnvDefinition
                 ) -> dict[str, Any]:
    """A DIAGNOSTIC that uses the simulator, which KALM may not: replay every imagined action
    sequence in the real env from its s_0 and label it on the simulator's states (cut at the
    first success, the env's own rewards and terminals), in the label-folder layout. Its
    judged successes are the LLM's rollouts that really reach the goal: what perfect labels
    would hand the learner, to tell how much is lost to wrong ones."""
    imagined, out_dir = Path(imagined), Path(out_dir)
    data = _read_imagined(imagined, "verifying")
    generated = data.episodes()
    env = make_env(definition)
    labelled = []
    try:
        for e in generated:
            actions = np.asarray(e.actions)
            replayed = replay_actions(definition, env, e.goal, e.observations[0], actions)
            if replayed is None:
                raise ValueError(f"env {definition.name!r} can neither set a state nor replay "
                                 "actions: no simulator verification possible")
            states = np.asarray(replayed[0], np.float32)
            t = definition.first_success(e.goal, states, actions)
            n = len(actions) if t is None else t + 1
            rewards, terminals = definition.labels(e.goal, states[: n + 1], actions[:n])
            labelled.append(Episode(states[: n + 1].copy(), actions[:n].copy(), rewards,
                                    terminals, e.instruction, dict(e.goal),
                                    extras={**e.extras, "simulator_success": t is not None},
                                    successes=np.asarray(terminals, bool).copy()))
    finally:
        env.close()
    labelled = select_proposals(labelled, "simulator_success")
    return write_label_folder(out_dir, data.spec, generated, labelled, "simulator_success",
                              {**data.attrs, "labeller": "simulator (diagnostic)"},
                              {"labeller": "simulator (diagnostic)", "uses_simulator": True,
                               "source": imagined.name})


def write_label_folder(out_dir: str | Path, spec: EnvSpecInfo, generated: list[Episode],
                       labelled: list[Episode], verdict: str, attrs: dict[str, Any],
                       info: dict[str, Any]) -> dict[str, Any]:
    """The label-folder layout that learners read, whoever proposed the rollouts: every
    LABELLED rollout and those whose VERDICT extra is true, each file written atomically (or
    removed when empty), and `label_stats.json` with INFO, the counts and the simulator
    diagnostics over the GENERATED rollouts; returns the stats. A labelled rollout with no
    transition left (cut at its first step: outvoted or untrusted) is not written; it still
    counts among the generated ones."""
    out_dir = Path(out_dir)
    labelled = [e for e in labelled if e.length > 0]
    successful = [e for e in labelled if e.extras[verdict]]
    out_dir.mkdir(parents=True, exist_ok=True)
    files: dict[str, str | None] = {}
    for keep, episodes in (("all", labelled), ("success", successful)):
        path = out_dir / KEEP_FILES[keep]
        if episodes:
            write_episodes(EpisodeData.from_episodes(
                episodes, spec, source="imagined", attrs={**attrs, "keep": keep}), path)
            files[keep] = path.name
        else:
            path.unlink(missing_ok=True)
            files[keep] = None
    replayed = [e for e in generated
                if "replay_success" in e.extras and e.extras.get("replayed", True)]
    stats = {
        **info,
        "generated": len(generated),
        "proposals_per_task": 1 + max((int(e.extras.get("proposal", 0)) for e in generated),
                                      default=0),
        "kept": {"all": len(labelled), "success": len(successful)},
        "transitions": {"all": sum(e.length for e in labelled),
                        "success": sum(e.length for e in successful)},
        "judged_successful": len(successful),
        "files": files,
        # simulator diagnostics: reported, never used to label or filter
        "diagnostic": {
            "replayed": len(replayed),
            "replayed_successful": sum(bool(e.extras["replay_success"]) for e in replayed),
            "replayed_successful_of_kept": sum(bool(e.extras.get("replay_success"))
                                               for e in successful),
            "labeller": label_quality(labelled, verdict),
            "llm_self": label_quality(generated, "self_success"),
        },
    }
    write_json(stats, out_dir / STATS_FILE)
    return stats


def labelled_file(folder: str | Path, keep: str) -> Path | None:
    """The file of a label folder holding the rollouts KEEP (`all` | `success`) asks for; None
    when the labeller kept none."""
    if keep not in KEEP_FILES:
        raise ValueError(f"keep must be one of {', '.join(KEEP_FILES)}, got {keep!r}")
    path = Path(folder) / KEEP_FILES[keep]
    return path if path.is_file() else None


__all__ = [
    "ALL_FILE",
    "KEEP_FILES",
    "LABELLERS",
    "STATS_FILE",
    "SUCCESS_FILE",
    "LabelConfig",
    "label_level",
    "labelled_file",
    "verify_level",
]
