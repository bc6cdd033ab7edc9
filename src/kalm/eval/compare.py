"""Real-only baseline vs KALM (real + that level's imagined data), per level, over seeds.

For each seed: one baseline policy on real data, evaluated on every level; for each level with
imagined data, one KALM policy on real + imagined (1:1 per batch), evaluated on that level.

Layout: OUT/<policy>/ (policy.d3, checkpoints, logs) and OUT/evaluate/<policy>/eval-LEVEL.json.
Every policy folder and every evaluation folder holds a `manifest.json` naming what made it
(training: the data files' SHA-256, algorithm config, steps, seed, ratio; evaluation: the
policy file's SHA-256, levels and episodes, seed, suite, env). A rerun reuses or resumes a folder
whose manifest matches; a policy folder made for another config is moved aside to
`<policy>.superseded-<hash>` and retrained, an evaluation folder made for another policy or
config is replaced. Outputs: results.json, results.md (mean +- std over seeds) and a bar plot
like the paper's Fig. 4.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kalm.data.suites import SPLITS, load_builtin_suite, resolve_suite
from kalm.eval.evaluate import evaluate_policy
from kalm.io import claim_folder, file_sha256, write_json, write_text_atomic
from kalm.rl.algos import AlgoConfig
from kalm.rl.train import TrainConfig, TrainedPolicy, train_policy

LEVEL_ORDER = ("train", "rephrase", "easy", "hard")
EVALUATE = "evaluate"  # OUT/evaluate/<policy>/eval-LEVEL.json


def ordered_levels(levels) -> list[str]:
    """CLEVR's levels in the paper's order first, any other env's levels after, sorted."""
    present = set(levels)
    return [lv for lv in LEVEL_ORDER if lv in present] + sorted(present - set(LEVEL_ORDER))


@dataclass
class CompareConfig:
    real: str = ""
    out: str = ""
    imagined: dict[str, str] = field(default_factory=dict)  # level -> episode file
    algo: str = "cql"
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    steps: int = 100_000
    episodes: int = 100  # evaluation episodes per level and seed
    easy_episodes: int = 200
    levels: list[str] = field(default_factory=lambda: list(LEVEL_ORDER))
    suite_file: str | None = None  # evaluate on this suite instead of the built-in ones
    workers: int = 2
    eval_seed: int = 1000
    # evaluate on this half of each built-in suite by goal (`dev` or `test`; None: whole suites;
    # a suite_file is the user's own and is never split)
    split: str | None = None
    # each RL seed's policies on scenes of their own (seeded by eval_seed, split and RL seed),
    # so the spread over seeds includes scene variance, not only training variance
    scenes_per_seed: bool = False
    # discrete CQL/BCQ/SAC target sync interval; None: the run's steps / algos.TARGET_SYNCS
    target_update_interval: int | None = None
    cql_alpha: float | None = None  # CQL's conservative weight; None: AlgoConfig's default
    imagined_ratio: float = 0.5  # share of each KALM batch drawn from imagined data
    level_ratios: dict[str, float] = field(default_factory=dict)  # per level, overrides it
    env: str = "clevr"  # kalm.envs.registry name of the env the policies are evaluated in
    method: str = "kalm"  # name of the imagined-data policies (folders METHOD-LEVEL-seedS)
    baseline: bool = True  # train and evaluate the real-only baseline too

    def __post_init__(self) -> None:
        if self.method == "baseline":
            raise ValueError("method 'baseline' is the real-only policy's name")
        if self.split is not None and self.split not in SPLITS:
            raise ValueError(f"split: expected one of {', '.join(SPLITS)} or None, got "
                             f"{self.split!r}")

    def ratio_for(self, level: str) -> float:
        return self.level_ratios.get(level, self.imagined_ratio)


def _suite(cfg: CompareConfig, level: str):
    if cfg.suite_file:
        return resolve_suite(None, cfg.suite_file, env=cfg.env).by_level(level)
    return load_builtin_suite(level, env=cfg.env, split=cfg.split)


def scene_seed(base: int, split: str | None = None, rl_seed: int | None = None) -> int:
    """The evaluation seed (scenes and goal order) of a split and an RL seed's policies: BASE
    itself for whole suites shared by every seed (the old way), else a seed of its own for each
    (split, RL seed), so dev and test never share scenes and each seed draws its own."""
    if split is None and rl_seed is None:
        return base
    parts = [base, 0 if split is None else 1 + SPLITS.index(split),
             *([] if rl_seed is None else [1 + rl_seed])]
    return int(np.random.SeedSequence(parts).generate_state(1)[0])


def eval_seed_for(cfg: CompareConfig, rl_seed: int | None) -> int:
    split = None if cfg.suite_file else cfg.split
    return scene_seed(cfg.eval_seed, split, rl_seed if cfg.scenes_per_seed else None)


def policy_runs(cfg: CompareConfig, seed: int) -> list[tuple[str, str | None]]:
    """(folder name, level of its imagined data or None for the baseline) for one seed."""
    return ([(f"baseline-seed{seed}", None)] if cfg.baseline else []) + [
        (f"{cfg.method}-{level}-seed{seed}", level) for level in cfg.imagined]


@functools.lru_cache(maxsize=64)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    return file_sha256(path)


def file_identity(path: str | Path) -> str:
    """SHA-256 of a file's content (cached while its size and mtime stay the same)."""
    st = Path(path).stat()
    return _sha256(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


def policy_train_config(cfg: CompareConfig, seed: int, level: str | None, folder: Path
                        ) -> TrainConfig:
    imagined = [cfg.imagined[level]] if level else []
    return TrainConfig(real=cfg.real, out=str(folder), imagined=imagined,
                       algo=AlgoConfig(algo=cfg.algo,
                                       target_update_interval=cfg.target_update_interval,
                                       **({} if cfg.cql_alpha is None
                                          else {"cql_alpha": cfg.cql_alpha})),
                       steps=cfg.steps, seed=seed,
                       imagined_ratio=cfg.ratio_for(level) if level else cfg.imagined_ratio,
                       save_every=max(1, cfg.steps // 10))


def train_identity(tc: TrainConfig) -> dict[str, Any]:
    """What decides a trained policy (not where its files are, nor how often it checkpoints:
    resuming is exact)."""
    return {"kind": "kalm train", "real": file_identity(tc.real),
            "imagined": [file_identity(p) for p in tc.imagined], "algo": tc.algo.identity(),
            "steps": tc.steps, "seed": tc.seed,
            "imagined_ratio": tc.imagined_ratio if tc.imagined else None,
            "text_encoder": tc.text_encoder}


def train_seed(cfg: CompareConfig, root: Path, seed: int, progress: bool = True) -> list[Path]:
    """Train (or resume, or reuse when finished) the baseline and every KALM policy of a seed;
    a policy folder made for another config is moved aside first (see the module doc)."""
    out = []
    for name, level in policy_runs(cfg, seed):
        folder = root / name
        tc = policy_train_config(cfg, seed, level, folder)
        claim_folder(folder, train_identity(tc), stale="move")
        if not (folder / "policy.d3").exists():
            train_policy(tc, resume=True, progress=progress)
        out.append(folder)
    return out


def level_episodes(cfg: CompareConfig, level: str) -> int:
    return cfg.easy_episodes if level == "easy" else cfg.episodes


def eval_identity(cfg: CompareConfig, policy_dir: Path, levels: list[str],
                  rl_seed: int | None = None) -> dict[str, Any]:
    """What decides a policy's evaluation results (the suite files by content)."""
    from kalm.envs.registry import get_env
    from kalm.rl.train import POLICY_FILE

    if cfg.suite_file:
        suite: Any = file_identity(cfg.suite_file)
    else:
        definition = get_env(cfg.env)
        suite = {lv: file_identity(p) if (p := definition.suite_path(lv)) else None
                 for lv in levels}
    return {"kind": "kalm evaluate", "policy": file_identity(policy_dir / POLICY_FILE),
            "levels": {lv: level_episodes(cfg, lv) for lv in levels},
            "seed": eval_seed_for(cfg, rl_seed), "suite": suite, "env": cfg.env,
            "init_region": "paper",
            **({"split": cfg.split} if cfg.split and not cfg.suite_file else {})}


def _evaluate(cfg: CompareConfig, policy: Any, name: str, level: str, out: Path,
              rl_seed: int | None = None) -> dict[str, Any]:
    """One level's result, from OUT when it is already written (resume). `policy` is what
    `evaluate_policy` takes: a factory or one of the env's built-in policy names."""
    if out.exists():
        return json.loads(out.read_text())
    res = evaluate_policy(policy, _suite(cfg, level), level_episodes(cfg, level),
                          seed=eval_seed_for(cfg, rl_seed), workers=cfg.workers, name=name,
                          env=cfg.env)
    result = res.to_json()["levels"][level]
    write_json(result, out)
    return result


def evaluate_builtin_policy(cfg: CompareConfig, policy: str, out: Path) -> list[Path]:
    """One of the env's own policies (`expert`, `random`) on every level, with the episodes,
    scenes and evaluation seed of the trained policies, so it reads as their ceiling or floor.
    A level already written is kept (resume)."""
    paths = [out / f"eval-{lv}.json" for lv in cfg.levels]
    for lv, path in zip(cfg.levels, paths, strict=True):
        _evaluate(cfg, policy, policy, lv, path)
    return paths


def evaluations(cfg: CompareConfig, seed: int) -> list[tuple[str, str, str]]:
    """(method, policy folder, level) of every evaluation of a seed: the baseline on every
    level, each KALM policy on the level of its imagined data."""
    return [("baseline" if level is None else cfg.method, name, lv)
            for name, level in policy_runs(cfg, seed)
            for lv in (cfg.levels if level is None else [level])]


def methods(cfg: CompareConfig) -> list[str]:
    return (["baseline"] if cfg.baseline else []) + [cfg.method]


def evaluate_seed(cfg: CompareConfig, policies: Path, out: Path, seed: int
                  ) -> dict[str, dict[str, dict[str, Any]]]:
    """Evaluate one seed's policies: the baseline on every level, each KALM policy on its level.

    Results go to OUT/<policy>/eval-<level>.json. A folder whose manifest matches (same policy
    file, levels, episodes, seed, suite) keeps its results (resume); any other is replaced."""
    results: dict[str, dict[str, dict[str, Any]]] = {m: {} for m in methods(cfg)}
    for name, level in policy_runs(cfg, seed):
        levels = cfg.levels if level is None else [level]
        folder = out / name
        claim_folder(folder, eval_identity(cfg, policies / name, levels, seed), stale="remove")
        method = "baseline" if level is None else cfg.method
        for lv in levels:
            policy_dir = str(policies / name)
            results[method][lv] = _evaluate(cfg, functools.partial(TrainedPolicy, policy_dir),
                                            policy_dir, lv, folder / f"eval-{lv}.json", seed)
    return results


def summarize(cfg: CompareConfig, per_seed: dict[int, dict[str, dict[str, dict[str, Any]]]]
              ) -> dict[str, Any]:
    """Success rates over seeds per method and level (seed order kept)."""
    success: dict[str, dict[str, list[float]]] = {m: {} for m in methods(cfg)}
    for res in per_seed.values():  # and any other method the results hold (paper mode)
        for m in res:
            success.setdefault(m, {})
    episodes: dict[str, int] = {}
    for seed in sorted(per_seed):
        for method, levels in per_seed[seed].items():
            for lv, r in levels.items():
                success[method].setdefault(lv, []).append(r["success_rate"])
                episodes[lv] = r["episodes"]
    return {"algo": cfg.algo, "seeds": sorted(per_seed), "steps": cfg.steps,
            "episodes_per_level_and_seed": episodes, "success": success}


def write_summary(summary: dict[str, Any], root: Path) -> None:
    """results.json, results.md and results.png in ROOT."""
    write_json(summary, root / "results.json")
    write_text_atomic(root / "results.md", markdown_table(summary))
    bar_plot(summary, root / "results.png")


def run_compare(cfg: CompareConfig) -> dict[str, Any]:
    root = Path(cfg.out)
    per_seed = {}
    for seed in cfg.seeds:
        train_seed(cfg, root, seed)
        per_seed[seed] = evaluate_seed(cfg, root, root / EVALUATE, seed)
    summary = summarize(cfg, per_seed)
    write_summary(summary, root)
    return summary


def fmt_rate(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{100 * np.mean(values):.1f} ± {100 * np.std(values):.1f}"


def markdown_table(summary: dict[str, Any]) -> str:
    res = {"baseline": {}, "kalm": {}, **summary["success"]}
    levels = ordered_levels([*res["baseline"], *res["kalm"]])
    lines = [f"Success rate (%) of {summary['algo'].upper()}, mean ± std over seeds "
             f"{summary['seeds']}, {summary['steps']} training steps; episodes per level and "
             f"seed: {summary['episodes_per_level_and_seed']}.", "",
             "| level | real only | KALM (real + imagined) |", "|---|---|---|"]
    for lv in levels:
        lines.append(f"| {lv} | {fmt_rate(res['baseline'].get(lv, []))} | "
                     f"{fmt_rate(res['kalm'].get(lv, []))} |")
    return "\n".join(lines) + "\n"


def bar_plot(summary: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res = summary["success"]
    series = [(key, label) for key, label in (("baseline", "real only"), ("kalm", "KALM"),
                                               ("paper", "KALM, paper mode")) if res.get(key)]
    levels = ordered_levels([lv for key, _ in series for lv in res[key]])
    x = np.arange(len(levels))
    width = 0.8 / max(len(series), 1)
    fig, ax = plt.subplots(figsize=(1.8 * len(levels) + 2, 3.2))
    for k, (key, label) in enumerate(series):
        means = [100 * np.mean(res[key][lv]) if res[key].get(lv) else 0 for lv in levels]
        half_std = [50 * np.std(res[key][lv]) if res[key].get(lv) else 0 for lv in levels]
        ax.bar(x + (k - (len(series) - 1) / 2) * width, means, width, yerr=half_std, capsize=3,
               label=label)
    ax.set_xticks(x, levels)
    ax.set_ylabel("success rate (%)")
    ax.set_title(f"{summary['algo'].upper()}: real only vs KALM (error bars: half std)")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
