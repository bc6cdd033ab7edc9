"""Diagnostics on a finished `kalm run` folder (docs/experiments/10-clevr-quick-best-of-8.md).
Both read the run and write elsewhere; neither changes the run, so its stages stay up to date.

  python scripts/diagnose_run.py relabel RUN OUT
      each level's label stage again, same config, into OUT/label-LEVEL: for runs labelled
      before the label stage replayed the kept (cut) actions, the labeller's precision on them
  python scripts/diagnose_run.py first-proposals RUN OUT
      the first proposal of every task of a best-of-N run's imagined files, OUT/n1-LEVEL.h5:
      the N = 1 rollouts, for `kalm signals`
  python scripts/diagnose_run.py hold-zeros RUN OUT
      every level imagined again with the run's model and settings, without and with
      `hold_zeros`, into OUT/off and OUT/on (run-folder layout, labelled by the run's labeller;
      compare them with scripts/compare_action_heads.py off=OUT/off on=OUT/on). A model saved
      before grounding measured `zero_held` gets it from the run's real data and training
      split, in a copy at OUT/ground
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from kalm.data.episodes import EpisodeData, read_episodes, write_episodes
from kalm.envs.registry import get_env
from kalm.imagination.dynamics import DynamicsEnsemble
from kalm.imagination.labelling import label_level
from kalm.run_folder import GROUND, imagine_stage, label_stage, load_run, real_data


def relabel(run: Path, out: Path) -> None:
    cfg = load_run(run)
    dynamics = DynamicsEnsemble.load(run / "dynamics")
    for level in cfg.imagine.levels:
        stats = label_level(run / imagine_stage(level) / "imagined.h5", out / f"label-{level}",
                            cfg.label, get_env(cfg.env), dynamics)
        d = stats["diagnostic"]
        print(f"{level}: kept {stats['judged_successful']} of {stats['kept']['all']} tasks, "
              f"right on replay of the kept actions {d['replayed_successful_of_kept']}; "
              f"labeller {json.dumps(d['labeller'])}")


def first_proposals(run: Path, out: Path) -> None:
    cfg = load_run(run)
    out.mkdir(parents=True, exist_ok=True)
    for level in cfg.imagine.levels:
        data = read_episodes(run / imagine_stage(level) / "imagined.h5")
        first = [e for e in data.episodes() if int(e.extras.get("proposal", 0)) == 0]
        write_episodes(EpisodeData.from_episodes(first, data.spec, source="imagined",
                                                 attrs=data.attrs), out / f"n1-{level}.h5")
        print(f"{level}: {len(first)} of {len(data)} rollouts -> {out / f'n1-{level}.h5'}")


def _model_with_zero_held(run: Path, out: Path) -> Path:
    """The run's grounded model, or a copy of it carrying `zero_held` if it has none."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    from kalm.llm.train import split_episodes, zero_held_statistics

    cfg = load_run(run)
    weights = load_file(str(run / GROUND / "weights.safetensors"))
    if "zero_held" in weights:
        return run / GROUND
    copy = out / GROUND
    if not (copy / "kalm_model.json").exists():
        data = read_episodes(real_data(run))
        train, _ = split_episodes(len(data), cfg.ground.val_fraction, cfg.ground.seed)
        weights["zero_held"] = torch.from_numpy(zero_held_statistics(data.subset(train)))
        shutil.copytree(run / GROUND, copy, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("checkpoint*", "kalm_model.json"))
        save_file(weights, str(copy / "weights.safetensors"))
        shutil.copy(run / GROUND / "kalm_model.json", copy)  # last: the copy is complete
    return copy


def hold_zeros(run: Path, out: Path) -> None:
    import shutil

    from kalm.imagination.stage import ImagineConfig, imagine

    cfg = load_run(run)
    model = _model_with_zero_held(run, out)
    im = cfg.imagine
    dynamics = DynamicsEnsemble.load(run / "dynamics") if cfg.label.needs_dynamics else None
    for arm in ("off", "on"):
        (out / arm / GROUND).mkdir(parents=True, exist_ok=True)
        shutil.copy(model / "grounding_metrics.json", out / arm / GROUND)
        for level, per_goal in im.levels.items():
            imagined = out / arm / imagine_stage(level) / "imagined.h5"
            if not imagined.exists():
                imagine(ImagineConfig(model=str(model), out=str(imagined), suite=level,
                                      per_goal=per_goal, batch_size=im.batch_size,
                                      max_steps=im.max_steps, seed=im.seed,
                                      temperature=im.temperature, goals=im.goals,
                                      proposals=im.proposals,
                                      proposal_temperature=im.proposal_temperature,
                                      hold_zeros=arm == "on"))
            stats = label_level(imagined, out / arm / label_stage(level), cfg.label,
                                get_env(cfg.env), dynamics)
            print(f"{arm} {level}: kept {stats['judged_successful']} of "
                  f"{stats['kept']['all']} tasks")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["relabel", "first-proposals", "hold-zeros"])
    parser.add_argument("run", type=Path)
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    {"relabel": relabel, "first-proposals": first_proposals,
     "hold-zeros": hold_zeros}[args.what](args.run, args.out)


if __name__ == "__main__":
    main()
