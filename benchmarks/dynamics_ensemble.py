"""How good a judge of imagined rollouts is a dynamics ensemble fitted on the real data only?

Fits `DynamicsEnsemble` on a real episode file and prints, as markdown tables:

1. the fit (transitions, epochs, wall time, validation MSE);
2. held-out one-step error in the env's units (`definition.distance`), beside "nothing moves"
   (s' = s) and, with `--model`, the grounded LLM's own teacher-forced predictions on the same
   held-out episodes (the split `kalm ground` makes, same seed and fraction);
3. held-out open-loop error at steps 1, 2, 4, 8 (the ensemble's mean, the actions of the data);
4. the ensemble's disagreement on held-out real transitions (from which the default uncertainty
   threshold is taken, as a quantile);
5. with `--proxy LEVEL...`: how faithful the ensemble's success verdict is on action sequences
   that are not the expert's (the LLM's imagined actions are not either): a noisy expert
   (`--proxy-epsilon`) acts for at most `--proxy-steps` steps on the level's goals in the real
   simulator; the ensemble re-simulates the same actions from the same s_0 and judges success,
   which is compared with what really happened (precision / recall / AUROC);
6. with `--imagined FILE...` (files of `kalm imagine`, which store the simulator diagnostic
   `replay_success`), per level: precision / recall / AUROC / kept share of "judged successful"
   for the LLM's self-judged success, the ensemble relabel, and the ensemble relabel with the
   uncertainty threshold, against replayed success; and the state error of the LLM's and the
   ensemble's states against the replay, per step (the replay is a diagnostic here, never a
   label).

    python benchmarks/dynamics_ensemble.py --real runs/x/collect/real.h5 \\
        [--model runs/x/ground] [--imagined runs/x/imagine-rephrase/imagined.h5 ...]
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from kalm.data.episodes import Episode, EpisodeData, read_episodes
from kalm.data.rollout import episode_seed, reset_unsolved
from kalm.data.suites import resolve_suite
from kalm.envs.base import EnvDefinition
from kalm.envs.registry import get_env, make_env
from kalm.imagination.dynamics import (
    DynamicsConfig,
    DynamicsEnsemble,
    split_episodes,
    transitions,
)
from kalm.imagination.quality import replay_actions
from kalm.imagination.relabel import JudgeQuality, RelabelConfig, judge_quality, label_resimulated

STEPS = (1, 2, 4, 8)


def fmt(v: float | None, pct: bool = False, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return "n/a"
    return f"{100 * v:.1f}%" if pct else f"{v:.{digits}f}"


def table(header: list[str], rows: list[list[str]]) -> None:
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        print("| " + " | ".join(r) + " |")
    print()


# ------------------------------------------------------------------------------- real data
def one_step(ens: DynamicsEnsemble, definition: EnvDefinition, val: EpisodeData
             ) -> tuple[list[list[str]], np.ndarray]:
    tr = transitions(val)
    mean, members = ens.predict(tr.states, tr.actions)
    units = definition.state_units or "units"
    rows = []

    def row(name: str, pred: np.ndarray) -> list[str]:
        d = definition.distance(pred, tr.next_states)
        rmse = float(np.sqrt(((pred - tr.next_states) ** 2).mean()))
        return [name, str(len(tr)), fmt(float(d.mean())), fmt(float(np.median(d))),
                fmt(float(np.quantile(d, 0.9))), fmt(rmse)]

    rows.append(row("nothing moves (s' = s)", tr.states))
    rows.append(row(f"ensemble mean (K={ens.config.members})", mean))
    single = np.mean([definition.distance(m, tr.next_states).mean() for m in members])
    rows.append(["ensemble, single member (mean over members)", str(len(tr)), fmt(float(single)),
                 "", "", ""])
    print(f"(distances in {units})")
    return rows, ens.disagreement(tr.states, tr.actions)


def llm_one_step(model_dir: str, definition: EnvDefinition, val: EpisodeData,
                 max_episodes: int) -> list[list[str]]:
    """The grounded LLM's teacher-forced next-state predictions, through kalm.llm.metrics.

    `_state_errors` returns per-coordinate absolute errors, so the env distance is taken between
    the error vector and zero: exact for distances that depend on |a - b| per coordinate (CLEVR's
    mean ball distance, the default Euclidean)."""
    from kalm.llm.metrics import _state_errors
    from kalm.llm.prompts import PromptBuilder
    from kalm.llm.saving import load_rollout_model

    model, _ = load_rollout_model(model_dir)
    builder = PromptBuilder(model.tokenizer)
    eps = [val.episode(i) for i in range(min(max_episodes, len(val)))]
    rows = []
    dyn = [builder.dynamics(e.observations[t], e.actions[t], e.observations[t + 1])
           for e in eps for t in range(e.length)]
    roll = [builder.rollout(e.instruction, e.observations, e.actions) for e in eps]
    for name, seqs in (("LLM, dynamics objective (teacher-forced)", dyn),
                       ("LLM, rollout objective (teacher-forced)", roll)):
        _, abs_err, _ = _state_errors(model, builder, seqs)
        err = abs_err.double().numpy()
        d = definition.distance(err, np.zeros_like(err))
        rmse = float(np.sqrt((err ** 2).mean()))
        rows.append([name, str(len(err)), fmt(float(d.mean())), fmt(float(np.median(d))),
                     fmt(float(np.quantile(d, 0.9))), fmt(rmse)])
    return rows


def open_loop(ens: DynamicsEnsemble, definition: EnvDefinition, val: EpisodeData
              ) -> list[list[str]]:
    t_max = int(val.lengths.max())
    states, u = ens.rollout(val.observations[:, 0], val.actions[:, :t_max])
    rows = []
    for k in STEPS:
        has = np.flatnonzero(val.lengths >= k)
        if not len(has):
            rows.append([str(k), "0", "n/a", "n/a", "n/a"])
            continue
        true = val.observations[has, k]
        d = definition.distance(states[has, k], true)
        d0 = definition.distance(val.observations[has, 0], true)
        rows.append([str(k), str(len(has)), fmt(float(d.mean())), fmt(float(d0.mean())),
                     fmt(float(u[has, k - 1].mean()))])
    return rows


# ------------------------------------------------------------------------------- proxy judge
def proxy_episodes(definition: EnvDefinition, env_name: str, level: str, n: int,
                   epsilon: float, max_steps: int, seed: int) -> list[Episode]:
    """Noisy-expert rollouts of at most max_steps on `level`'s goals, with their true outcome
    as `replay_success` (they happened in the simulator)."""
    suite = resolve_suite(level, None, env_name)
    env = make_env(definition, "paper")
    policy = definition.policy("expert", seed)
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        entry = suite.entries[int(rng.integers(len(suite.entries)))]
        obs, info = reset_unsolved(env, entry.goal, entry.instruction, episode_seed(seed, i),
                                   entry.init)
        goal = dict(info.get("goal", entry.goal))
        policy.begin(env, goal, entry.instruction)
        states, acts, ok = [obs], [], False
        for _ in range(min(max_steps, int(definition.max_steps(goal)))):
            a = policy.act(states[-1])
            if rng.random() < epsilon:
                a = env.action_space.sample()
            obs, _, terminated, truncated, info = env.step(a)
            states.append(obs)
            acts.append(a)
            ok = bool(info.get("is_success", terminated))
            if terminated or truncated or ok:
                break
        acts_arr = np.asarray(acts)
        rewards, terminals = definition.labels(goal, np.asarray(states), acts_arr)
        out.append(Episode(np.asarray(states, np.float32), acts_arr, rewards, terminals,
                           entry.instruction, goal,
                           extras={"replay_success": ok, "level": level}))
    return out


def proxy_rows(ens: DynamicsEnsemble, definition: EnvDefinition, eps: list[Episode],
               threshold: float, label: str) -> list[list[str]]:
    rows = []
    relabelled, cut = [], []
    for e in eps:
        states, u = ens.rollout(e.observations[0], e.actions)
        relabelled.append(label_resimulated(e, states, u, definition))
        cut.append(label_resimulated(e, states, u, definition,
                                     RelabelConfig(max_uncertainty=threshold)))
    ok = np.array([r.extras["ensemble_success"] for r in relabelled])
    ok_cut = np.array([r.extras["ensemble_success"] for r in cut])
    u_max = np.array([r.extras["ensemble_uncertainty_max"] for r in relabelled])
    signals: dict[str, tuple[Any, Any]] = {
        "ensemble relabel": (ok, None),
        f"ensemble relabel, u <= {threshold:.3g}": (ok_cut, None),
        "ensemble relabel, ranked by -max u (AUROC)": (ok, ok.astype(float) + 1 / (1 + u_max))}
    rows += judged_rows(label, eps, signals)
    return rows


# ------------------------------------------------------------------------------- imagined data
def judged_rows(level: str, eps: list[Episode], signals: dict[str, tuple[Any, Any]]
                ) -> list[list[str]]:
    rows = []
    for name, (verdict, score) in signals.items():
        q: JudgeQuality = judge_quality(eps, verdict, score=score)
        rows.append([level, name, str(q.n), fmt(q.positives / q.n if q.n else None, True),
                     fmt(q.kept_share, True), fmt(q.precision, True), fmt(q.recall, True),
                     fmt(q.false_positive_rate, True), fmt(q.auroc)])
    return rows


def imagined_report(path: str, ens: DynamicsEnsemble, definition: EnvDefinition,
                    threshold: float) -> tuple[list[list[str]], list[list[str]]]:
    data = read_episodes(path)
    t0 = time.perf_counter()
    t_max = int(data.lengths.max())
    states, u = ens.rollout(data.observations[:, 0], data.actions[:, :t_max])
    plain_cfg, cut_cfg = RelabelConfig(), RelabelConfig(max_uncertainty=threshold)
    eps = data.episodes()
    plain = [label_resimulated(e, states[i], u[i], definition, plain_cfg)
             for i, e in enumerate(eps)]
    cut = [label_resimulated(e, states[i], u[i], definition, cut_cfg) for i, e in enumerate(eps)]
    relabel_s = time.perf_counter() - t0
    env = make_env(definition, None)
    by_level: dict[str, list[int]] = defaultdict(list)
    for i, e in enumerate(eps):
        by_level[str(e.extras.get("level", "?"))].append(i)
    judge_rows, error_rows = [], []
    for level, idx in sorted(by_level.items()):
        sub = [eps[i] for i in idx]
        ens_ok = np.array([plain[i].extras["ensemble_success"] for i in idx])
        cut_ok = np.array([cut[i].extras["ensemble_success"] for i in idx])
        u_max = np.array([plain[i].extras["ensemble_uncertainty_max"] for i in idx])
        signals: dict[str, tuple[Any, Any]] = {
            "LLM self-judged": ("self_success", None)}
        if all("realistic" in e.extras for e in sub):
            signals["LLM self-judged and realistic (imagine --filter)"] = (
                np.array([bool(e.extras["self_success"]) and bool(e.extras["realistic"])
                          for e in sub]), None)
        signals["ensemble relabel"] = (ens_ok, None)
        signals[f"ensemble relabel, u <= {threshold:.3g}"] = (cut_ok, None)
        signals["ensemble relabel, ranked by -max u (AUROC)"] = (
            ens_ok, ens_ok.astype(float) + 1.0 / (1.0 + u_max))
        signals["LLM self-judged and ensemble relabel"] = (
            np.array([bool(e.extras["self_success"]) for e in sub]) & ens_ok, None)
        judge_rows += judged_rows(f"{Path(path).name}: {level}", sub, signals)
        # states against the simulator's replay of the same actions (a diagnostic)
        llm_err: dict[int, list[float]] = defaultdict(list)
        ens_err: dict[int, list[float]] = defaultdict(list)
        for i in idx:
            e = eps[i]
            rep = replay_actions(definition, env, e.goal, e.observations[0],
                                 [_act(a) for a in e.actions])
            if rep is None:
                continue
            real = rep[0]
            d_llm = definition.distance(e.observations[1:], real[1:])
            d_ens = definition.distance(states[i, 1 : e.length + 1], real[1:])
            for k in STEPS:
                if e.length >= k:
                    llm_err[k].append(float(d_llm[k - 1]))
                    ens_err[k].append(float(d_ens[k - 1]))
        for k in STEPS:
            n = len(llm_err[k])
            error_rows.append([f"{Path(path).name}: {level}", str(k), str(n),
                               fmt(float(np.mean(llm_err[k])) if n else None),
                               fmt(float(np.mean(ens_err[k])) if n else None)])
    print(f"relabelled {len(eps)} rollouts of {path} in {relabel_s:.2f} s (both settings)")
    return judge_rows, error_rows


def _act(a: np.ndarray) -> Any:
    a = np.asarray(a)
    return int(a) if a.ndim == 0 else a


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--real", required=True, help="real episode file to fit on")
    ap.add_argument("--model", help="grounded model folder: its predictions beside the ensemble's")
    ap.add_argument("--imagined", nargs="*", default=[], help="episode files of kalm imagine")
    ap.add_argument("--load", help="a saved ensemble folder instead of fitting one")
    ap.add_argument("--save", help="save the fitted ensemble to this folder")
    d = DynamicsConfig()  # the library's defaults
    ap.add_argument("--members", type=int, default=d.members)
    ap.add_argument("--hidden", type=int, default=d.hidden)
    ap.add_argument("--layers", type=int, default=d.layers)
    ap.add_argument("--epochs", type=int, default=d.epochs)
    ap.add_argument("--patience", type=int, default=d.patience)
    ap.add_argument("--batch", type=int, default=d.batch_size)
    ap.add_argument("--lr", type=float, default=d.lr)
    ap.add_argument("--weight-decay", type=float, default=d.weight_decay)
    ap.add_argument("--val-fraction", type=float, default=d.val_fraction)
    ap.add_argument("--seed", type=int, default=d.seed)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--threshold", type=float, help="uncertainty threshold (default: quantile)")
    ap.add_argument("--threshold-quantile", type=float, default=0.99,
                    help="threshold = this quantile of the disagreement on held-out real data")
    ap.add_argument("--proxy", nargs="*", default=[], metavar="LEVEL",
                    help="suite levels for the noisy-expert judge check (e.g. rephrase hard)")
    ap.add_argument("--proxy-episodes", type=int, default=300)
    ap.add_argument("--proxy-epsilon", type=float, default=0.5)
    ap.add_argument("--proxy-steps", type=int, default=8)
    ap.add_argument("--llm-episodes", type=int, default=200,
                    help="held-out episodes the LLM predicts (it is slow on a CPU)")
    args = ap.parse_args()

    real = read_episodes(args.real)
    definition = get_env(real.spec.env)
    cfg = DynamicsConfig(members=args.members, hidden=args.hidden, layers=args.layers,
                         epochs=args.epochs, batch_size=args.batch, lr=args.lr,
                         weight_decay=args.weight_decay, val_fraction=args.val_fraction,
                         seed=args.seed, patience=args.patience)
    t0 = time.perf_counter()
    if args.load:
        ens = DynamicsEnsemble.load(args.load, spec=real.spec, threads=args.threads)
        cfg = ens.config
    else:
        ens = DynamicsEnsemble.fit(real, cfg, bounds=definition.clamp_box(),
                                   threads=args.threads,
                                   symmetry=definition.dynamics_symmetry)
    fit_s = time.perf_counter() - t0
    if args.save:
        ens.save(args.save)
    tr = ens.training
    print(f"## Dynamics ensemble on {args.real} ({len(real)} episodes, "
          f"{real.num_transitions} transitions, env {real.spec.env})\n")
    table(["members", "hidden", "train / val transitions", "epochs run", "best epoch per member",
           "val MSE (standardised delta)", "wall time"],
          [[str(cfg.members), f"{cfg.layers}x{cfg.hidden}",
            f"{tr.get('train_transitions')} / {tr.get('val_transitions')}",
            str(tr.get("epochs")), str(tr.get("best_epoch")),
            fmt(float(np.mean(tr["best_val_mse"]))) if tr.get("best_val_mse") else "n/a",
            f"{fit_s:.1f} s" + (" (loaded)" if args.load else "")]])

    _, val_idx = split_episodes(len(real), cfg.val_fraction, cfg.seed)
    if not len(val_idx):
        raise SystemExit("no held-out episodes: use --val-fraction > 0")
    val = real.subset(val_idx)
    print(f"### Held-out one-step error ({len(val)} episodes)\n")
    rows, u_val = one_step(ens, definition, val)
    if args.model:
        t1 = time.perf_counter()
        rows += llm_one_step(args.model, definition, val, args.llm_episodes)
        print(f"(LLM predictions on the first {min(args.llm_episodes, len(val))} held-out "
              f"episodes: {time.perf_counter() - t1:.1f} s)")
    table(["predictor", "transitions", "mean distance", "median", "90th pct", "RMSE / coord"],
          rows)

    print("### Held-out open-loop error (ensemble mean, the data's actions)\n")
    table(["step", "episodes", "ensemble", "nothing moves (s_0)", "mean u at step"],
          open_loop(ens, definition, val))

    qs = (0.5, 0.9, 0.95, 0.99, 1.0)
    threshold = args.threshold if args.threshold is not None else \
        float(np.quantile(u_val, args.threshold_quantile))
    print("### Disagreement u on held-out real transitions (standardised delta units)\n")
    table(["mean"] + [f"q{int(100 * q)}" for q in qs] + ["threshold used"],
          [[fmt(float(u_val.mean()))] + [fmt(float(np.quantile(u_val, q))) for q in qs]
           + [fmt(threshold)]])

    if args.proxy:
        rows = []
        for level in args.proxy:
            t1 = time.perf_counter()
            eps = proxy_episodes(definition, real.spec.env, level, args.proxy_episodes,
                                 args.proxy_epsilon, args.proxy_steps, seed=12345)
            rows += proxy_rows(ens, definition, eps, threshold, level)
            print(f"(proxy {level}: {len(eps)} rollouts, "
                  f"{sum(e.length for e in eps)} steps, {time.perf_counter() - t1:.0f} s)")
        print(f"\n### Ensemble verdict on noisy-expert action sequences (epsilon "
              f"{args.proxy_epsilon}, at most {args.proxy_steps} steps) against what happened\n")
        table(["level", "signal", "rollouts", "real success", "kept share", "precision",
               "recall", "false positive rate", "AUROC"], rows)

    if args.imagined:
        judge_rows, error_rows = [], []
        for path in args.imagined:
            j, e = imagined_report(path, ens, definition, threshold)
            judge_rows += j
            error_rows += e
        print("\n### Judging imagined rollouts against their replay in the simulator\n")
        table(["file: level", "signal", "rollouts", "replayed success", "kept share",
               "precision", "recall", "false positive rate", "AUROC"], judge_rows)
        units = definition.state_units or "units"
        print(f"### State error against the replay of the same actions ({units})\n")
        table(["file: level", "step", "rollouts", "LLM states", "ensemble states"], error_rows)


if __name__ == "__main__":
    main()
