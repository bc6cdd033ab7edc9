"""`kalm report`: one self-contained markdown + HTML page from the files of a `kalm run` folder.

Nothing in the report is typed in by hand: success rates come from the evaluation JSON files,
curves from the grounding metrics log, quality numbers from the imagination statistics, and the
GIFs are drawn from the imagined episode file next to a replay of the same actions in the real
simulator.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kalm.eval.compare import (
    bar_plot,
    evaluations,
    fmt_rate,
    methods,
    ordered_levels,
    summarize,
)
from kalm.io import save_gif, write_text_atomic
from kalm.run_folder import (
    GROUND,
    LLM_POLICY,
    LLM_POLICY_STAGE,
    PAPER,
    PLANNER_LLM,
    PLANNER_UNIFORM,
    POLICY_REFERENCES,
    PROPOSER_ROWS,
    RECORD,
    REPORT,
    SHOOTING,
    SHOOTING_MATCHED,
    VERIFIED,
    compare_config,
    dev_split,
    evaluate_stage,
    first_proposals_data,
    imagine_stage,
    imagined_data,
    kalm_data,
    label_stage,
    label_stats,
    load_run,
    paper_reads_first_proposals,
    reference_policy_stage,
    stage_names,
    too_few_kept,
    variants,
)

HTML_STYLE = """body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;padding:3px 8px}
th{background:#eee}img{max-width:100%}code{background:#f4f4f4}"""


def _records(root: Path) -> list[dict[str, Any]]:
    out = []
    for path in sorted(root.glob(f"*/{RECORD}")):
        if ".superseded-" in path.parent.name:
            continue
        out.append(json.loads(path.read_text()))
    return out


def stage_table(root: Path, order: list[str]) -> str:
    recs = {r["stage"]: r for r in _records(root)}
    lines = ["| stage | status | wall time (min) | CPU time (min) | attempts | hash |",
             "|---|---|---|---|---|---|"]
    total = cpu = 0.0
    for name in order:
        r = recs.get(name)
        if r is None:
            lines.append(f"| {name} | not run | - | - | - | - |")
            continue
        total += float(r["wall_s"])
        cpu += float(r.get("cpu_s", 0.0))
        status = "done" if r.get("done") else "running / interrupted"
        cpu_cell = f"{r['cpu_s'] / 60:.1f}" if "cpu_s" in r else "-"
        lines.append(f"| {name} | {status} | {r['wall_s'] / 60:.1f} | {cpu_cell} | "
                     f"{r.get('attempts', 1)} | `{r['hash'][:8]}` |")
    lines.append(f"| **total** | | **{total / 60:.1f}** | **{cpu / 60:.1f}** | | |")
    return "\n".join(lines)


METHOD_NAMES = {"baseline": "real only", "kalm": "KALM", PAPER: "KALM, paper mode",
                SHOOTING: "no LLM (shooting)",
                SHOOTING_MATCHED: "no LLM (shooting at the LLM's CPU-seconds)",
                PLANNER_UNIFORM: "planner, uniform prior (no LLM)",
                PLANNER_LLM: "planner, LLM prior",
                VERIFIED: "simulator-verified LLM rollouts (diagnostic)"}


def success_summaries(root: Path, cfg, split: str | None = None
                      ) -> dict[str, dict[str, Any]]:
    """Per algorithm: the compare-style summary over the seeds evaluated so far, with the
    reference rows (rl.reference_rows) as further methods beside real only and KALM; on the
    headline split, or the `dev` evaluations with SPLIT="dev"."""
    out = {}
    for algo in cfg.rl.algos:
        per_seed: dict[int, dict[str, dict[str, Any]]] = {}
        for variant in variants(cfg):
            cc = compare_config(cfg, algo, root, variant, split)
            for seed in cfg.seeds:
                folder = root / evaluate_stage(algo, seed, variant, split)
                res = per_seed.setdefault(seed, {})
                for m in methods(cc):
                    res.setdefault(m, {})
                for method, name, lv in evaluations(cc, seed):
                    path = folder / name / f"eval-{lv}.json"
                    if path.exists():
                        res[method][lv] = json.loads(path.read_text())
        per_seed = {s: r for s, r in per_seed.items() if any(r.values())}
        if per_seed:
            out[algo] = summarize(compare_config(cfg, algo, root), per_seed)
    return out


def untrained_reasons(root: Path, cfg, algo: str) -> dict[str, dict[str, str]]:
    """Per method, the labelled levels that KALM variant trains no policy on (`kalm_data`
    leaves them out: no rollout kept, or too few tasks covered), each with why, read from
    its `label_stats.json`: "1 of 164 tasks kept, under rl.min_kept_share 0.10". Nothing is
    evaluated for such a level; the paper mode keeps every rollout."""
    out: dict[str, dict[str, str]] = {}
    keep = cfg.rl.keep_for(algo)
    for variant in variants(cfg):
        if variant == PAPER:
            continue
        trained = kalm_data(cfg, root, algo, variant)
        for lv in cfg.imagine.levels:
            st = label_stats(root, lv, variant)
            if lv in trained or st is None:
                continue
            used, tasks = int(st["kept"][keep]), int(st["kept"]["all"])
            why = f"{used} of {tasks} tasks kept"
            if used and too_few_kept(st, keep, cfg.rl.min_kept_share):
                why += f", under rl.min_kept_share {cfg.rl.min_kept_share:.2f}"
            out.setdefault("kalm" if variant is None else variant, {})[lv] = why
    return out


def untrained_levels(root: Path, cfg, algo: str) -> dict[str, set[str]]:
    """Per method, the labelled levels that KALM variant trains no policy on
    (`untrained_reasons` without the reasons)."""
    return {m: set(why) for m, why in untrained_reasons(root, cfg, algo).items()}


NO_POLICY = "no KALM policy"


def no_policy_cell(why: str | None) -> str:
    """The success cell of a level with no KALM policy: says that none was trained (so
    there is no KALM result to read, not one equal to real only) and, when known, why."""
    return f"{NO_POLICY} ({why})" if why else f"{NO_POLICY} (too few rollouts kept)"


def success_table(summaries: dict[str, dict[str, Any]],
                  untrained: dict[str, dict[str, Any]] | None = None) -> str:
    """Success per level and method; `untrained` (per algorithm, per method the levels with
    no KALM policy: `untrained_reasons`, or the sets of `untrained_levels`) marks those cells
    "no KALM policy (why)" instead of leaving them blank."""
    untrained = untrained or {}
    algos = list(summaries)
    shown = [m for m in METHOD_NAMES
             if any(s["success"].get(m) for s in summaries.values())
             or any(untrained.get(a, {}).get(m) for a in algos)]
    levels = ordered_levels([lv for s in summaries.values() for m in shown
                             for lv in s["success"].get(m, {})])
    head = "| level | episodes / seed | " + " | ".join(
        f"{a.upper()} {METHOD_NAMES[m]}" for a in algos for m in shown) + " |"
    lines = [head, "|---|---|" + "---|" * (len(algos) * len(shown))]
    for lv in levels:
        eps = next((s["episodes_per_level_and_seed"].get(lv) for s in summaries.values()
                    if lv in s["episodes_per_level_and_seed"]), "-")
        cells = []
        for a in algos:
            for m in shown:
                rates = summaries[a]["success"].get(m, {}).get(lv)
                none = untrained.get(a, {}).get(m, ())
                if lv in none and not rates:
                    cells.append(no_policy_cell(none.get(lv) if isinstance(none, dict)
                                                else None))
                else:
                    cells.append(fmt_rate(rates or []))
        lines.append(f"| {lv} | {eps} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def llm_policy_table(root: Path, levels: list[str]) -> str | None:
    """The grounded LLM acting in the real env itself, per level (one evaluation seed)."""
    folder = root / LLM_POLICY_STAGE
    rows = []
    for lv in levels:
        path = folder / f"eval-{lv}.json"
        if path.exists():
            r = json.loads(path.read_text())
            rows.append(f"| {lv} | {r['episodes']} | {100 * r['success_rate']:.1f} |")
    if not rows:
        return None
    return "\n".join(["| level | episodes | success (%) |", "|---|---|---|", *rows])


def _reference_results(root: Path, levels: list[str]) -> dict[str, dict[str, Any]]:
    """policy -> level -> its evaluation, for the env's own policies the run evaluated."""
    out: dict[str, dict[str, Any]] = {}
    for policy in POLICY_REFERENCES:
        for lv in levels:
            path = root / reference_policy_stage(policy) / f"eval-{lv}.json"
            if path.exists():
                out.setdefault(policy, {})[lv] = json.loads(path.read_text())
    return out


def reference_policies_table(root: Path, levels: list[str]) -> str | None:
    """The env's scripted expert (ceiling) and random actions (floor), same scenes."""
    found = _reference_results(root, levels)
    if not found:
        return None
    policies = list(found)
    lines = ["| level | episodes | " + " | ".join(f"{p} (%)" for p in policies) + " |",
             "|---|---|" + "---|" * len(policies)]
    for lv in levels:
        if not any(lv in found[p] for p in policies):
            continue
        eps = next(found[p][lv]["episodes"] for p in policies if lv in found[p])
        cells = [f"{100 * found[p][lv]['success_rate']:.1f}" if lv in found[p] else "-"
                 for p in policies]
        lines.append(f"| {lv} | {eps} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def task_table(root: Path, cfg) -> str | None:
    """Success per task, for envs whose goals name one (Meta-World): real only and KALM per
    algorithm over the seeds, beside the env's own policies; None when no result has tasks."""
    cells: dict[tuple[str, str], dict[str, list[float]]] = {}
    columns: list[str] = []

    def add(level: str, result: dict[str, Any], column: str) -> None:
        for task, t in result.get("tasks", {}).items():
            cells.setdefault((level, task), {}).setdefault(column, []).append(t["success_rate"])
            if column not in columns:
                columns.append(column)

    for algo in cfg.rl.algos:
        cc = compare_config(cfg, algo, root)
        for seed in cfg.seeds:
            for method, name, lv in evaluations(cc, seed):
                path = root / evaluate_stage(algo, seed) / name / f"eval-{lv}.json"
                if path.exists():
                    add(lv, json.loads(path.read_text()),
                        f"{algo.upper()} {METHOD_NAMES[method]}")
    for policy, results in _reference_results(root, list(cfg.evaluate.levels)).items():
        for lv, result in results.items():
            add(lv, result, policy)
    if not cells:
        return None
    order = {lv: i for i, lv in enumerate(ordered_levels([lv for lv, _ in cells]))}
    lines = ["| level | task | " + " | ".join(columns) + " |",
             "|---|---|" + "---|" * len(columns)]
    for (lv, task) in sorted(cells, key=lambda k: order[k[0]]):
        row = cells[(lv, task)]
        lines.append(f"| {lv} | {task} | " + " | ".join(fmt_rate(row.get(c, []))
                                                       for c in columns) + " |")
    return "\n".join(lines)


def labelling_table(root: Path, levels: list[str], proposers: Sequence[str] = (),
                    verified: bool = False) -> str:
    """Per level: what was generated, what the labeller kept and judged successful, and (a
    diagnostic that uses the simulator) how many really reach the goal, and the labels'
    precision."""
    lines = ["| level | labeller | generated | kept (all) | judged successful | replayed "
             "successful, of generated (diagnostic) | replayed successful, of judged "
             "successful (diagnostic) | labeller precision / recall / AUROC (diagnostic) | "
             "LLM self-judged precision (diagnostic) |", "|---|---|---|---|---|---|---|---|---|"]
    rows = [(lv, None) for lv in levels] + [(lv, row) for row in proposers for lv in levels] \
        + ([(lv, VERIFIED) for lv in levels] if verified else [])
    for lv, variant in rows:
        st = label_stats(root, lv, variant)
        if st is None:
            lines.append(f"| {lv} | not labelled yet | | | | | | | |")
            continue
        d = st["diagnostic"]

        def pr(q: dict[str, Any] | None) -> str:
            if not q:
                return "-"
            return " / ".join("-" if q.get(k) is None else
                              (f"{q[k]:.2f}" if k == "auroc" else f"{100 * q[k]:.1f}%")
                              for k in ("precision", "recall", "auroc"))

        judged = st["judged_successful"]
        def count(n: int, of: int) -> str:
            return f"{n} ({100 * n / of:.1f}%)" if of else "-"

        of_judged = count(d["replayed_successful_of_kept"], judged if d["replayed"] else 0)
        of_generated = count(d["replayed_successful"], d["replayed"])
        self_prec = (d["llm_self"] or {}).get("precision")
        who = st["labeller"] + {
            SHOOTING: ", actions from random shooting (no LLM)",
            SHOOTING_MATCHED: ", random shooting at the LLM's CPU-seconds (no LLM)",
            PLANNER_UNIFORM: ", actions from the planner, uniform prior (no LLM)",
            PLANNER_LLM: ", actions from the planner, the LLM's proposals as prior"}.get(
                variant, "")
        lines.append(f"| {lv} | {who} | {st['generated']} | {st['kept']['all']} | "
                     f"{judged} | {of_generated} | {of_judged} | {pr(d['labeller'])} | "
                     f"{'-' if self_prec is None else f'{100 * self_prec:.1f}%'} |")
    return "\n".join(lines)


def imagined_use_table(root: Path, cfg) -> str:
    """What each KALM policy learned from: the rollouts kept for it and the share of every
    batch they fill (a level with nothing kept has no KALM policy)."""
    lines = ["| algorithm | variant | level | labels | rollouts used | transitions used | "
             "imagined share of each batch |", "|---|---|---|---|---|---|---|"]
    for algo in cfg.rl.algos:
        for variant in variants(cfg):
            for lv in cfg.imagine.levels:
                if variant == PAPER:
                    n, what = _paper_rollouts(root, cfg, lv)
                    lines.append(f"| {algo.upper()} | paper mode | {lv} | LLM's own, {what} | "
                                 f"{'-' if n is None else n} | - | 0.50 |")
                    continue
                keep = cfg.rl.keep_for(algo)
                row = "KALM" if variant is None else METHOD_NAMES[variant]
                st = label_stats(root, lv, variant)
                if st is None:
                    lines.append(f"| {algo.upper()} | {row} | {lv} | not labelled yet | | | |")
                    continue
                used = st["kept"][keep]
                share = f"{cfg.rl.ratio_for(lv, algo):.2f}" if used else "0 (no policy trained)"
                if used and too_few_kept(st, keep, cfg.rl.min_kept_share):
                    share = (f"0 (no policy trained: {used} of {st['kept']['all']} tasks kept, "
                             f"under rl.min_kept_share {cfg.rl.min_kept_share:.2f})")
                what = "judged successful" if keep == "success" else "every kept rollout"
                lines.append(f"| {algo.upper()} | {row} | {lv} | {st['labeller']}, {what} | "
                             f"{used} | {st['transitions'][keep]} | {share} |")
    return "\n".join(lines)


def _paper_rollouts(root: Path, cfg, level: str) -> tuple[int | None, str]:
    """(rollouts, which) the paper mode learns from at LEVEL: one greedy rollout per task of a
    best-of-N file (counted in its file once the paper train stage wrote it), else all."""
    if paper_reads_first_proposals(cfg):
        path = first_proposals_data(root, level)
        n = None
        if path.exists():
            from kalm.data.episodes import read_episodes

            n = len(read_episodes(path))
        return n, "the greedy proposal of each task"
    path = root / imagine_stage(level) / "imagined.stats.json"
    n = json.loads(path.read_text()).get("kept") if path.exists() else None
    return n, "every rollout"


def _cpu_s(root: Path, stage: str) -> float | None:
    path = root / stage / RECORD
    if not path.exists():
        return None
    return json.loads(path.read_text()).get("cpu_s")


def compute_table(root: Path, cfg) -> str | None:
    """CPU-seconds per level of who proposed the rollouts: the LLM's imagine + label stages
    against the shooting and planner rows (their own search, the replay diagnostic not
    counted), and CPU-seconds per kept rollout; None when the run has none of these rows."""
    rows = [r for r in PROPOSER_ROWS if r in cfg.rl.reference_rows]
    if not rows:
        return None
    lines = ["| level | proposer | tasks | candidates tried | CPU-s | kept (judged successful) | "
             "CPU-s per kept rollout |", "|---|---|---|---|---|---|---|"]

    def per_kept(cpu: float | None, kept: int) -> str:
        return "-" if cpu is None or not kept else f"{cpu / kept:.2f}"

    for lv in cfg.imagine.levels:
        st = label_stats(root, lv)
        parts = [_cpu_s(root, imagine_stage(lv)), _cpu_s(root, label_stage(lv))]
        llm = None if None in parts else float(sum(parts))
        if st is not None:
            kept = int(st["judged_successful"])
            n = st["kept"]["all"]
            lines.append(f"| {lv} | the LLM, best-of-{cfg.imagine.proposals} (imagine + "
                         f"label) | {n} | - | {'-' if llm is None else f'{llm:.0f}'} | {kept} | "
                         f"{per_kept(llm, kept)} |")
        for row in rows:
            st = label_stats(root, lv, row)
            if st is None or "cpu_seconds" not in st:
                continue
            kept = int(st["judged_successful"])
            lines.append(f"| {lv} | {METHOD_NAMES[row]} | {st.get('tasks', st['generated'])} | "
                         f"{st.get('candidates_tried', '-')} | {st['cpu_seconds']:.0f} | "
                         f"{kept} | {per_kept(st['cpu_seconds'], kept)} |")
    return "\n".join(lines)


def grounding_section(root: Path, folder: Path, units: str) -> list[str]:
    from kalm.eval.plots import plot_grounding_curves

    u = f" ({units})" if units else ""
    ground = root / GROUND
    lines = ["## Grounding", ""]
    if (ground / "metrics.jsonl").exists():
        plot_grounding_curves(ground / "metrics.jsonl", folder / "grounding-curves.png")
        lines += ["![grounding curves](grounding-curves.png)", ""]
    path = ground / "grounding_metrics.json"
    if path.exists():
        m = json.loads(path.read_text())
        tf = m.get("rollout_teacher_forced", {})
        rows = [
            ("optimizer steps", m.get("steps")),
            ("training time (min)", f"{m.get('train_seconds', 0) / 60:.1f}"),
            ("validation episodes", m.get("val_episodes")),
            ("action accuracy (teacher forced)", _pct(tf.get("action_accuracy"))),
            (f"rollout next-state RMSE{u}", _num(tf.get("rmse_m"))),
            (f"dynamics next-state RMSE{u}", _num(m.get("dynamics", {}).get("rmse_m"))),
            (f"final-state (consequence) RMSE{u}",
             _num(m.get("consequence", {}).get("rmse_m"))),
            ("explanation accuracy", _pct(m.get("explanation", {}).get("accuracy"))),
            ("precision", m.get("dtype")),
        ]
        lines += ["| metric (held-out episodes) | value |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in rows if v is not None]
    return lines


def _pct(v: float | None) -> str | None:
    return None if v is None else f"{100 * v:.1f}%"


def _num(v: float | None) -> str | None:
    return None if v is None else f"{v:.3f}"


def _realism_columns(stats: dict[str, dict[str, Any]]) -> list[str]:
    """The env's realism categories, as they appear in the statistics (`<category>_pct`)."""
    keys = {k for s in stats.values() for k in s
            if k.endswith("_pct") and k != "unrealistic_rollouts_pct"}
    return sorted(keys)


def imagination_table(root: Path, levels: list[str], units: str = "") -> str:
    """Quality of the imagined rollouts per level. Replay numbers use the real simulator:
    a diagnostic of how wrong the labels are, never used to label or filter."""
    all_stats: dict[str, dict[str, Any]] = {}
    for lv in levels:
        path = root / imagine_stage(lv) / "imagined.stats.json"
        if path.exists():
            all_stats.update(json.loads(path.read_text())["levels"])
    cols = [("rollouts", "rollouts", str), ("transitions", "transitions", str),
            ("self-judged match", "self_judged_match", _pct),
            ("replayed match (diagnostic)", "replayed_match", _pct),
            ("random-action replay (diagnostic)", "random_replay_match", _pct),
            ("unrealistic rollouts", "unrealistic_rollouts_pct", lambda v: f"{v:.1f}%")]
    cols += [(k[:-4].replace("_", " ") + " (% transitions)", k, lambda v: f"{v:.1f}")
             for k in _realism_columns(all_stats)]
    cols.append((f"state error{f' ({units})' if units else ''}", "state_error_mean", _num))
    lines = ["| level | " + " | ".join(c[0] for c in cols) + " |",
             "|---|" + "---|" * len(cols)]
    for name, s in all_stats.items():
        s = {"state_error_mean": s.get("state_error_mean_m"), **s}  # files of earlier versions
        cells = [fmt(s[key]) if s.get(key) is not None else "-" for _, key, fmt in cols]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def side_by_side_gifs(root: Path, folder: Path, level: str, k: int, definition) -> list[Path]:
    """Imagined rollout (left) next to the same actions replayed in the simulator (right): a
    diagnostic picture; the replay uses the simulator, which KALM itself may not."""
    from kalm.data.episodes import read_episodes
    from kalm.envs.registry import make_env
    from kalm.imagination.quality import replay_actions

    path = imagined_data(root, level)
    if not path.exists() or k < 1 or definition.draw_state is None:
        return []
    data = read_episodes(path)
    env = make_env(definition)
    out = []
    try:
        for i in range(min(k, len(data))):
            ep = data.episode(i)
            replayed = replay_actions(definition, env, ep.goal, ep.observations[0], ep.actions)
            if replayed is None:
                return out
            real, ok = replayed
            imagined = ep.observations
            left = definition.frames(imagined, 220, [f"imagined t={t}"
                                                     for t in range(len(imagined))])
            right = definition.frames(
                real, 220, [f"real replay t={t}" + (" (goal met)" if ok and t == len(real) - 1
                                                    else "") for t in range(len(real))])
            gap = np.full((left[0].shape[0], 6, 3), 255, np.uint8)
            frames = [np.concatenate([a, gap, b], axis=1)
                      for a, b in zip(left, right, strict=True)]
            out.append(save_gif(frames, folder / f"{level}-{i}.gif", fps=1.5))
            out[-1].with_suffix(".txt").write_text(ep.instruction)
    finally:
        env.close()
    return out


def write_report(root: str | Path, folder: str | Path | None = None) -> tuple[Path, Path]:
    """report.md and report.html (images inlined) for the run folder ROOT."""
    from kalm.envs.registry import find_env

    root = Path(root)
    cfg = load_run(root)
    definition = find_env(cfg.env)
    units = definition.state_units if definition is not None else ""
    folder = Path(folder) if folder is not None else root / REPORT
    folder.mkdir(parents=True, exist_ok=True)
    stages = stage_names(cfg)
    md = [f"# kalm run report: {cfg.name}", "",
          f"Run folder `{root}`, env `{cfg.env}`, seeds {cfg.seeds}, algorithms "
          f"{', '.join(a.upper() for a in cfg.rl.algos)}. Every number below is read from the "
          "files of this run; success rates are episodes in the real simulator.", "",
          "## Stages", "", stage_table(root, [s for s in stages if s != REPORT]), ""]

    summaries = success_summaries(root, cfg)
    split = cfg.evaluate.split
    where = (f"the **{split}** half of each level's goals (`evaluate.split`)" if split and
             not cfg.suite_file else "the whole suites")
    scenes = ("each seed's policies on scenes of their own" if cfg.evaluate.scenes_per_seed
              else f"every policy on the same scenes (evaluation seed {cfg.evaluate.seed})")
    untrained = {a: untrained_reasons(root, cfg, a) for a in summaries}
    md += ["## Success rate (%) in the real simulator", ""]
    if summaries:
        steps = ", ".join(f"{a.upper()} {s['steps']}" for a, s in summaries.items())
        md += ["Mean ± std over seeds " + ", ".join(
            f"{a.upper()} {s['seeds']}" for a, s in summaries.items()) +
            f"; training steps {steps}; evaluated on {where}, {scenes}. *Real only* is "
            "the same algorithm on the real episodes only; *KALM* adds that level's imagined "
            f"rollouts as labelled by the `{cfg.label.labeller}` labeller, in the share of "
            "every batch the table below gives; *paper mode* (when run) adds the LLM's "
            "rollouts with its own labels 1:1, one greedy rollout per task, as the paper does; "
            "\"no KALM policy\": that level's labels kept too few rollouts (how many: in the "
            "cell and the next table), so no KALM policy was trained or evaluated there and "
            "there is no KALM result to compare, only the real-only one.", "",
            success_table(summaries, untrained), ""]
        dev = success_summaries(root, cfg, "dev") if dev_split(cfg) else {}
        if dev:
            md += ["### The dev half (where defaults are chosen)", "",
                   "The same policies on the other half of each level's goals, on scenes of "
                   "their own; a default of kalm's is chosen on these numbers, never on the "
                   "table above.", "", success_table(dev, untrained), ""]
        md += ["### Imagined data each KALM policy learned from", "",
               imagined_use_table(root, cfg), ""]
        compute = compute_table(root, cfg)
        if compute:
            md += ["### Compute of the proposers", "",
                   "CPU-seconds (all threads of the process) of the LLM's imagination and "
                   "labelling of a level against the shooting and planner rows' own search "
                   "(the LLM-prior planner needs the LLM's imagination too), and per rollout "
                   "judged successful.", "", compute, ""]
        llm = llm_policy_table(root, list(cfg.evaluate.levels))
        if LLM_POLICY in cfg.rl.reference_rows or llm:
            md += ["### The grounded LLM as the policy (the paper's Fig. 5)", "",
                   "The grounded model's action head acting in the real simulator, greedy, "
                   "one evaluation seed.", "", llm or "Not evaluated yet.", ""]
        refs = reference_policies_table(root, list(cfg.evaluate.levels))
        if refs:
            md += ["### The env's own policies: scripted expert (ceiling), random (floor)", "",
                   "Same levels, scenes and episodes as the trained policies.", "", refs, ""]
        tasks = task_table(root, cfg)
        if tasks:
            md += ["### Success per task (%)", "",
                   "Mean ± std over the seeds evaluated (one evaluation per reference policy).",
                   "", tasks, ""]
        for algo, s in summaries.items():
            bar_plot(s, folder / f"success-{algo}.png")
            md += [f"![{algo} success](success-{algo}.png)", ""]
    else:
        md += ["No evaluation results yet.", ""]

    md += [*grounding_section(root, folder, units), ""]
    md += ["## Imagined rollouts", "",
           "Self-judged match: the imagined final state satisfies the goal (the label KALM "
           "trains on). Replayed match (a diagnostic that uses the simulator, which KALM may "
           "not): the imagined actions, replayed from the imagined start state in the real "
           "simulator, reach the goal. Random-action replay: the same for random actions of "
           "the same length (the floor).", "",
           imagination_table(root, list(cfg.imagine.levels), units), "",
           "### Labels", "",
           "Judged successful: by the run's labeller (`ensemble`: the imagined actions "
           "re-simulated through the dynamics ensemble fitted on the real data; `llm`: the "
           "LLM's own predicted states). The replay columns use the simulator (a diagnostic "
           "of the labels' precision, never used to label or filter).", "",
           labelling_table(root, list(cfg.imagine.levels),
                           [r for r in PROPOSER_ROWS if r in cfg.rl.reference_rows],
                           verified=VERIFIED in cfg.rl.reference_rows), ""]
    if definition is not None and definition.draw_state is not None:
        md += ["### Imagined (left) vs the same actions in the real simulator (right; "
               "diagnostic)", ""]
        for lv in cfg.imagine.levels:
            gifs = side_by_side_gifs(root, folder, lv, cfg.report.gifs_per_level, definition)
            for g in gifs:
                md += [f"**{lv}**: \"{g.with_suffix('.txt').read_text()}\"", "",
                       f"![{lv} rollout]({g.name})", ""]
    md_path = write_text_atomic(folder / "report.md", "\n".join(md) + "\n")
    html_path = write_text_atomic(folder / "report.html", to_html("\n".join(md), folder))
    return md_path, html_path


def to_html(md_text: str, folder: Path) -> str:
    """Markdown to one HTML file with every image inlined as a data URI."""
    import markdown

    body = markdown.markdown(md_text, extensions=["tables"])

    def inline(m: re.Match[str]) -> str:
        src = m.group(1)
        path = folder / src
        if not path.is_file():
            return m.group(0)
        mime = "image/gif" if src.endswith(".gif") else "image/png"
        data = base64.b64encode(path.read_bytes()).decode()
        return f'src="data:{mime};base64,{data}"'

    body = re.sub(r'src="([^"]+)"', inline, body)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>kalm report</title>"
            f"<style>{HTML_STYLE}</style></head><body>{body}</body></html>\n")
