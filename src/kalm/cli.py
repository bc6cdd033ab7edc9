"""The `kalm` command line."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from kalm.rl.algos import ALGOS  # names only: d3rlpy is imported when an algorithm is built


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="kalm")
def main() -> None:
    """kalm: knowledgeable agents from LLM-imagined rollouts (KALM, NeurIPS 2024).

    Stages: collect real episodes -> ground an LLM -> imagine rollouts -> offline RL ->
    evaluate in the real simulator; `kalm run --config configs/clevr-quick.yaml` chains them
    all (resumable) and ends with `kalm report`. Run `kalm COMMAND --help` for each.
    """


def _fail(exc: Exception) -> None:
    click.echo(f"error: {exc}", err=True)
    sys.exit(2)


def _policy_factory(policy: str, device: str = "auto"):
    """(factory or built-in name, env string the policy was trained for or None); `device` is
    where a grounded model (the LLM-as-policy baseline) runs."""
    import functools

    p = Path(policy)
    if not p.exists():
        return policy, None
    from kalm.rl.train import POLICY_FILE, TrainedPolicy, policy_env

    if (p / "kalm_model.json").is_file():  # a grounded model: the LLM-as-policy baseline
        from kalm.eval.llm_policy import LLMPolicy
        from kalm.llm.saving import read_meta

        return (functools.partial(LLMPolicy, str(p), device=device),
                read_meta(p)["spec"]["env"])
    if p.is_file() or (p / POLICY_FILE).is_file():
        return functools.partial(TrainedPolicy, str(p)), policy_env(p)
    return policy, None


def _env_name(env: str) -> str | None:
    """The definition name behind an env string (None for a plain name kalm cannot load)."""
    from kalm.envs.registry import find_env

    definition = find_env(env)
    return definition.name if definition is not None else None


@main.command()
@click.option("--env", default="clevr", show_default=True,
              help="Environment: 'clevr' (built in), 'package.module:ATTR' or "
                   "'path/to/file.py:ATTR' naming an EnvDefinition (docs/custom-env.md).")
@click.option("--suite", default="train", show_default=True,
              help="Built-in goal suite of the env the goals and instructions are drawn from "
                   "(clevr: train, rephrase, easy, hard, all).")
@click.option("--suite-file", type=click.Path(dir_okay=False), default=None,
              help="A JSONL goal suite to use instead of a built-in one.")
@click.option("--episodes", type=int, default=1000, show_default=True,
              help="Episodes to write (successful ones unless --keep-failures).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--epsilon", type=float, default=0.0, show_default=True,
              help="Probability of a random action instead of the expert's, for diversity.")
@click.option("--keep-failures", is_flag=True, help="Also keep episodes that did not succeed.")
@click.option("--policy", default="expert", show_default=True,
              help="Built-in behaviour policy of the env ('expert', 'random'); options as "
                   "NAME:KEY=VALUE, e.g. metaworld's 'expert:noise=mix'.")
@click.option("--init-region", type=click.Choice(["paper", "table"]), default="paper",
              show_default=True, help="Initial-state box: the original's, or the reachable table.")
@click.option("--workers", type=int, default=2, show_default=True, help="Worker processes.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Output .h5 file.")
def collect(env, suite, suite_file, episodes, seed, epsilon, keep_failures, policy, init_region,
            workers, out) -> None:
    """Collect real episodes with the scripted expert into an HDF5 episode file.

    Interrupted runs resume from the finished chunks in OUT.parts/; the file is written
    atomically at the end. The --env string is stored in the file, so `kalm ground`,
    `kalm imagine` and `kalm train` find the env from the data.
    """
    from kalm.data.collect import CollectConfig
    from kalm.data.collect import collect as run_collect

    cfg = CollectConfig(out=out, env=env, suite=suite, suite_file=suite_file, episodes=episodes,
                        seed=seed, epsilon=epsilon, keep_failures=keep_failures, policy=policy,
                        init_region=init_region, workers=workers)
    try:
        data = run_collect(cfg)
    except ValueError as exc:
        _fail(exc)
    lengths = data.lengths
    click.echo(f"wrote {len(data)} episodes ({data.num_transitions} transitions, "
               f"{int(data.attrs['attempts'])} attempts, median length "
               f"{float(sorted(lengths)[len(lengths) // 2]):.0f}) to {out}")


@main.command()
@click.option("--env", default=None,
              help="Environment: 'clevr' (built in), 'package.module:ATTR' or "
                   "'path/to/file.py:ATTR' naming an EnvDefinition (docs/custom-env.md). "
                   "Default: the env the policy was trained for, else clevr.")
@click.option("--policy", required=True,
              help="'expert', 'random', a trained policy folder (or its policy.d3), or a "
                   "grounded model folder (the LLM-as-policy baseline).")
@click.option("--suite", default="train", show_default=True,
              help="Built-in goal suite of the env (clevr: train, rephrase, easy, hard, all).")
@click.option("--suite-file", type=click.Path(dir_okay=False), default=None,
              help="A JSONL goal suite to use instead of a built-in one.")
@click.option("--split", type=click.Choice(["dev", "test"]), default=None,
              help="Only that half of the built-in suite's goals (defaults are chosen on dev, "
                   "headlines reported on test; `kalm run` evaluates test, and dev beside it).")
@click.option("--episodes", type=int, default=100, show_default=True, help="Episodes per level.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--workers", type=int, default=2, show_default=True, help="Worker processes.")
@click.option("--init-region", type=click.Choice(["paper", "table"]), default="paper",
              show_default=True)
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None,
              help="Write the results as JSON here.")
@click.option("--gif", type=int, default=0, show_default=True,
              help="Write GIFs of the first K episodes next to --json (or in ./eval-gifs).")
@click.option("--device", default="auto", show_default=True,
              help="Where a grounded model (LLM-as-policy) runs: auto (cuda when present), cpu, "
                   "cuda, cuda:N.")
def evaluate(env, policy, suite, suite_file, split, episodes, seed, workers, init_region,
             json_out, gif, device) -> None:
    """Run a policy closed-loop in the real simulator and print success per level."""
    from kalm.data.suites import SuiteError, resolve_suite
    from kalm.envs.registry import EnvError, get_env
    from kalm.eval.evaluate import evaluate_policy
    from kalm.io import write_json

    factory, policy_env = _policy_factory(policy, device)
    env = env or policy_env or "clevr"
    try:
        definition = get_env(env)
        trained_for = _env_name(policy_env) if policy_env else None
    except EnvError as exc:
        _fail(exc)
    if isinstance(factory, str) and policy.partition(":")[0] not in definition.policy_names:
        from kalm.rl.train import POLICY_FILE

        names = ", ".join(repr(n) for n in definition.policy_names)
        _fail(ValueError(f"--policy {policy!r} is not {names} (built-in policies of env "
                         f"{definition.name!r}), a trained policy (folder with {POLICY_FILE}) "
                         "or a grounded model folder"))
    if trained_for is not None and trained_for != definition.name:
        _fail(ValueError(f"--policy {policy!r} was trained for env {policy_env!r} "
                         f"({trained_for}), not {env!r}; pass --env {policy_env}"))
    if gif and definition.draw_state is None:
        _fail(ValueError(f"--gif: env {definition.name!r} has no draw_state hook"))
    try:
        if split and suite_file:
            raise SuiteError("--split splits a built-in suite; a --suite-file is used whole")
        goal_suite = resolve_suite(suite, suite_file, definition)
        if split:
            goal_suite = goal_suite.split(split)
        result = evaluate_policy(factory, goal_suite, episodes, seed=seed, workers=workers,
                                 init_region=init_region, name=policy, env=env)
    except (SuiteError, ValueError) as exc:
        _fail(exc)
    click.echo(f"policy {result.policy}, seed {seed}, suite {suite_file or suite}"
               f"{f' ({split} half)' if split else ''}")
    click.echo(result.table())
    if json_out:
        write_json(result.to_json(), json_out)
        click.echo(f"wrote {json_out}")
    if gif:
        from kalm.io import save_gif

        folder = Path(json_out).parent if json_out else Path("eval-gifs")
        for i, ep in enumerate(result.episodes[:gif]):
            tag = "ok" if ep.success else "fail"
            p = save_gif(definition.frames(ep.observations, captions=ep.instruction),
                         folder / f"episode-{i:03d}-{tag}.gif")
            click.echo(f"wrote {p}")


@main.command()
@click.argument("episodes_file", type=click.Path(dir_okay=False))
@click.option("--index", type=int, multiple=True, help="Episode index (repeatable; default 0).")
@click.option("--out", type=click.Path(), default=None,
              help="GIF path (one episode) or folder (several); default next to the file.")
@click.option("--fps", type=float, default=2.0, show_default=True)
@click.option("--frame", type=int, default=None,
              help="Draw only this step of each episode (negative: from the end) as a still "
                   "image (PNG when --out ends in .png).")
def render(episodes_file, index, out, fps, frame) -> None:
    """Render episodes of an episode file as animated GIFs (the env's drawing of its states),
    or one step of each as a still image (--frame)."""
    from kalm.data.episodes import EpisodeFileError, read_episodes
    from kalm.envs.registry import EnvError, get_env
    from kalm.io import save_gif

    try:
        data = read_episodes(episodes_file)
        definition = get_env(data.spec.env)
    except (EpisodeFileError, EnvError) as exc:
        _fail(exc)
    if definition.draw_state is None:
        _fail(ValueError(f"{episodes_file}: env {definition.name!r} has no draw_state hook"))
    indices = list(index) or [0]
    for i in indices:
        if not 0 <= i < len(data):
            _fail(ValueError(f"--index {i} is outside [0, {len(data)})"))
    base = Path(episodes_file)
    for i in indices:
        ep = data.episode(i)
        if out and len(indices) == 1 and str(out).endswith((".gif", ".png")):
            path = Path(out)
        else:
            folder = Path(out) if out else base.with_suffix("")
            path = folder / (f"episode-{i:05d}.gif" if frame is None
                             else f"episode-{i:05d}-step-{frame}.png")
        states = ep.observations
        if frame is not None:
            if not -len(states) <= frame < len(states):
                _fail(ValueError(f"--frame {frame} is outside episode {i} "
                                 f"({len(states)} states)"))
            states = states[frame : frame + 1 if frame != -1 else None]
        images = definition.frames(states, captions=ep.instruction)
        if path.suffix == ".png":
            from PIL import Image

            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[0]).save(path)
        else:
            save_gif(images, path, fps=fps)
        click.echo(f"wrote {path} ({ep.length} steps, success={ep.success}): {ep.instruction}")


@main.command()
@click.option("--data", type=click.Path(dir_okay=False), default=None,
              help="Episode file (.h5) to ground on.")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Output folder (model, checkpoints, metrics).")
@click.option("--backbone", default=None,
              help="Local Hugging Face model folder; default: the packaged SmolLM2-135M.")
@click.option("--lora", "lora_r", type=int, default=None,
              help="LoRA rank (LoRA is the default mode, rank 16).")
@click.option("--full", is_flag=True, help="Full fine-tuning instead of LoRA.")
@click.option("--steps", type=int, default=None, help="Optimizer steps (wins over --epochs).")
@click.option("--epochs", type=float, default=None, help="Passes over the training episodes.")
@click.option("--batch", "batch_size", type=int, default=None, help="Batch size (default 8).")
@click.option("--lr", type=float, default=None, help="Peak learning rate.")
@click.option("--head-lr-scale", type=float, default=None,
              help="Learning rate of the new embeddings and heads as a multiple of --lr "
                   "(default 1).")
@click.option("--action-head", type=click.Choice(["regression", "bins"]), default=None,
              help="Continuous actions: regression (MSE, the paper's; the default) or bins "
                   "(cross-entropy per dimension over bins between the env's action bounds).")
@click.option("--action-bins", type=int, default=None,
              help="Bins per action dimension of --action-head bins (default 21).")
@click.option("--bf16", type=click.Choice(["auto", "on", "off"]), is_flag=False, flag_value="on",
              default=None, help="bfloat16 autocast: --bf16 (on), --bf16 off, or --bf16 auto "
                                 "(the default: on where a start-up probe measures it faster "
                                 "than fp32, e.g. CUDA; off on CPUs without native bf16).")
@click.option("--no-bf16", is_flag=True, help="Same as --bf16 off.")
@click.option("--seed", type=int, default=None)
@click.option("--time-limit", "time_limit_minutes", type=float, default=None,
              help="Stop after this many minutes (the model is saved as at the end).")
@click.option("--budget", "budget_minutes", type=float, default=None,
              help="Fit the number of steps, and so the whole learning-rate schedule, to this "
                   "many minutes (measured step time; validation, metrics and saving included).")
@click.option("--device", default=None,
              help="auto (cuda when present, else cpu; the default), cpu, cuda, cuda:N.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
              help="YAML file with GroundConfig fields (a `ground:` section or top level).")
@click.option("--resume", is_flag=True, help="Continue from the last checkpoint in --out.")
def ground(data, out, backbone, lora_r, full, steps, epochs, batch_size, lr, head_lr_scale,
           action_head, action_bins, bf16, no_bf16, seed, time_limit_minutes, budget_minutes,
           device, config_file, resume) -> None:
    """Ground a causal LM in the environment: fine-tune on the four KALM objectives.

    Works under `accelerate launch kalm ground ...` for several devices.
    """
    from dataclasses import asdict

    from kalm.config import ConfigError, from_dict, load_yaml
    from kalm.llm.backbone import BackboneError
    from kalm.llm.model import ModelConfig
    from kalm.llm.saving import CheckpointMismatch
    from kalm.llm.train import GroundConfig
    from kalm.llm.train import ground as run_ground

    if no_bf16:
        bf16 = "off"
    overrides = {"data": data, "out": out, "backbone": backbone, "steps": steps,
                 "epochs": epochs, "batch_size": batch_size, "lr": lr,
                 "head_lr_scale": head_lr_scale,
                 "bf16": {"on": True, "off": False, "auto": "auto", None: None}[bf16],
                 "seed": seed, "time_limit_minutes": time_limit_minutes,
                 "budget_minutes": budget_minutes, "device": device}
    try:
        if config_file:
            import yaml

            raw = yaml.safe_load(Path(config_file).read_text()) or {}
            section = "ground" if isinstance(raw, dict) and "ground" in raw else None
            cfg = load_yaml(GroundConfig, config_file, section=section, overrides=overrides)
        else:
            cfg = from_dict(GroundConfig, {k: v for k, v in overrides.items() if v is not None})
        if action_head is not None or action_bins is not None:
            cfg.model = ModelConfig(**{**asdict(cfg.model),
                                       **({"action_head": action_head} if action_head else {}),
                                       **({"action_bins": action_bins} if action_bins else {})})
        if full:
            cfg.adapter.mode = "full"
        if lora_r is not None:
            cfg.adapter.mode, cfg.adapter.lora_r = "lora", lora_r
        if not cfg.data or not cfg.out:
            raise ConfigError("--data and --out are required (or set them in --config)")
        result = run_ground(cfg, resume=resume)
    except (ConfigError, BackboneError, CheckpointMismatch, ValueError, FileNotFoundError) as exc:
        _fail(exc)

    click.echo(json.dumps(result, indent=2)[:4000])
    click.echo(f"saved the grounded model to {cfg.out}")


@main.command("export")
@click.argument("episodes_file", type=click.Path(dir_okay=False))
@click.option("--format", "fmt", type=click.Choice(["minari", "d3rlpy"]), required=True,
              help="minari: a Minari dataset (minari 0.5) under MINARI_DATASETS_PATH; d3rlpy: "
                   "a file d3rlpy's ReplayBuffer.load reads.")
@click.option("--id", "dataset_id", default=None,
              help="Minari dataset id, e.g. kalm/clevr-real-v0 (--format minari).")
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="d3rlpy dataset file (--format d3rlpy); FILE.json beside it describes it.")
@click.option("--overwrite", is_flag=True, help="Replace a Minari dataset of the same id.")
@click.option("--description", default=None, help="Minari dataset description.")
@click.option("--author", default=None, help="Minari dataset author.")
@click.option("--with-instruction-embedding", is_flag=True,
              help="d3rlpy: observations = state ++ embedding of the instruction, what kalm's "
                   "policies see (needed to evaluate the trained policy with kalm evaluate).")
@click.option("--text-encoder", default=None,
              help="Local sentence-transformer folder for the embedding (default: the packaged "
                   "MiniLM, as kalm train).")
def export(episodes_file, fmt, dataset_id, out, overwrite, description, author,
           with_instruction_embedding, text_encoder) -> None:
    """Write an episode file (real or imagined) as a Minari dataset or a d3rlpy dataset file
    (docs/datasets.md)."""
    from kalm.data.episodes import EpisodeFileError, read_episodes

    if fmt == "minari" and (not dataset_id or out or with_instruction_embedding):
        _fail(ValueError("--format minari takes --id (not --out or "
                         "--with-instruction-embedding)"))
    if fmt == "d3rlpy" and (not out or dataset_id):
        _fail(ValueError("--format d3rlpy takes --out (not --id)"))
    try:
        data = read_episodes(episodes_file)
        if fmt == "minari":
            from kalm.data.formats.minari_io import export_minari

            ds = export_minari(data, dataset_id, overwrite=overwrite, description=description,
                               author=author)
            click.echo(f"wrote Minari dataset {dataset_id} ({ds.total_episodes} episodes, "
                       f"{ds.total_steps} steps) to {ds.storage.data_path.parent}")
        else:
            from kalm.rl.export import export_d3rlpy, sidecar_path

            info = export_d3rlpy(data, out, with_instruction_embedding=with_instruction_embedding,
                                 text_encoder=text_encoder)
            click.echo(f"wrote {out} ({info['episodes']} episodes: "
                       f"{info['terminated_episodes']} terminated, {info['timeout_episodes']} "
                       f"timeouts; {info['transitions']} transitions; {info['obs_dim']}-d "
                       f"observations) and {sidecar_path(out)}")
    except (EpisodeFileError, ImportError, FileNotFoundError, ValueError) as exc:
        _fail(exc)


@main.command("import")
@click.argument("source")
@click.option("--format", "fmt", type=click.Choice(["minari", "kalm-npy", "imaginebench"]),
              required=True,
              help="minari: a local Minari dataset id or folder; kalm-npy: the padded dict of "
                   "KALM's code (.npy/.npz/.h5); imaginebench: ImagineBench's HDF5 files.")
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="Output episode file (.h5).")
@click.option("--env", default=None,
              help="Env string of the data (default: what a kalm-written Minari dataset names; "
                   "clevr for the published layouts).")
@click.option("--level", default=None,
              help="The level the file holds (train, rephrase, easy, hard, or KALM's names): "
                   "how CLEVR goal vectors are read.")
@click.option("--source", "source_kind", type=click.Choice(["real", "imagined"]),
              default="real", show_default=True, help="Published layouts: real or imagined data.")
@click.option("--meta", type=click.Path(dir_okay=False), default=None,
              help="Companion file with the fields the data file lacks (instructions, goals, "
                   "env_names), e.g. ImagineBench's .npy beside its .h5.")
@click.option("--allow-pickle", is_flag=True,
              help="Read pickled .npy/.npz files. Unpickling can run arbitrary code: use it only "
                   "for files you trust.")
@click.option("--no-instructions", is_flag=True,
              help="Import a published file that has no instructions (left empty; kalm's "
                   "goal-conditioned training needs them).")
def import_(source, fmt, out, env, level, source_kind, meta, allow_pickle,
            no_instructions) -> None:
    """Read a Minari dataset, or KALM's or ImagineBench's published data, into a kalm episode
    file (docs/datasets.md)."""
    from kalm.data.episodes import EpisodeFileError, write_episodes
    from kalm.envs.registry import EnvError

    try:
        if fmt == "minari":
            if level or meta or allow_pickle or no_instructions:
                _fail(ValueError("--format minari takes only --env and --out"))
            from kalm.data.formats.minari_io import import_minari

            data = import_minari(source, env=env)
        else:
            from kalm.data.formats.published import import_published

            data = import_published(source, fmt, env or "clevr", level=level,
                                    source=source_kind, meta=meta, allow_pickle=allow_pickle,
                                    require_instructions=not no_instructions)
        write_episodes(data, out)
    except (EpisodeFileError, EnvError, ImportError, ValueError) as exc:
        _fail(exc)
    ends = data.terminals[range(len(data)), data.lengths - 1] if len(data) else []
    goals = sum(1 for g in data.goals if g)
    click.echo(f"wrote {out}: {len(data)} {data.source} episodes of env {data.spec.env!r}, "
               f"{data.num_transitions} steps, {int(sum(ends))} ending at a terminal, "
               f"{len(data) - int(sum(ends))} at a timeout; goals for {goals} episodes")


@main.command()
@click.option("--model", "model_dir", required=True, type=click.Path(file_okay=False),
              help="A grounded model folder (the --out of `kalm ground`); its env is the one "
                   "the grounding data was collected in.")
@click.option("--suite", default="rephrase", show_default=True,
              help="Built-in goal suite of the model's env (clevr: train, rephrase, easy, hard, "
                   "all).")
@click.option("--suite-file", type=click.Path(dir_okay=False), default=None,
              help="A JSONL goal suite to use instead of a built-in one.")
@click.option("--per-goal", type=int, default=10, show_default=True,
              help="Rollouts per goal of the suite.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Output .h5 file.")
@click.option("--batch", "batch_size", type=int, default=16, show_default=True)
@click.option("--max-steps", type=int, default=None,
              help="Cap on the rollout length (default: the goal's own limit, 50; 1 for push).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--temperature", type=float, default=0.0, show_default=True,
              help="Action sampling temperature; 0 = greedy.")
@click.option("--proposals", type=int, default=1, show_default=True,
              help="Best-of-N: proposals per rollout from the same start state (the first at "
                   "--temperature, the others at --proposal-temperature); `kalm run`'s label "
                   "stage keeps one per rollout, a verified one where there is one.")
@click.option("--proposal-temperature", type=float, default=1.0, show_default=True)
@click.option("--no-cache", is_flag=True,
              help="Re-encode the whole sequence each step (tests and benchmarks only).")
@click.option("--filter", "filter_", is_flag=True,
              help="Drop rollouts with unrealistic transitions.")
@click.option("--filter-explanation", is_flag=True,
              help="Drop rollouts whose own explanation names another goal (cycle consistency).")
@click.option("--backbone", default=None, help="Load the model onto this local backbone folder.")
@click.option("--clamp/--no-clamp", default=None,
              help="Clamp generated states to the reachable table (default: as trained).")
@click.option("--hold-zeros", is_flag=True,
              help="Keep the coordinates the grounding data never moved off zero (an absent "
                   "entity's block) at zero where the start state has them at zero.")
@click.option("--device", default="auto", show_default=True,
              help="Where the model runs: auto (cuda when present), cpu, cuda, cuda:N.")
def imagine(model_dir, suite, suite_file, per_goal, out, batch_size, max_steps, seed,
            temperature, proposals, proposal_temperature, no_cache, filter_, filter_explanation,
            backbone, clamp, hold_zeros, device) -> None:
    """Imagine rollouts for a goal suite with a grounded model, labelled and quality-checked.

    Writes an episode file (source `imagined`) and OUT.stats.json with the match rates
    (self-judged and replayed in the real simulator), unrealistic-transition rates and the
    state error against the simulator per step.
    """

    from kalm.data.suites import SuiteError
    from kalm.imagination.stage import ImagineConfig
    from kalm.imagination.stage import imagine as run_imagine
    from kalm.llm.backbone import BackboneError
    from kalm.llm.saving import CheckpointMismatch

    cfg = ImagineConfig(model=model_dir, out=out, suite=suite, suite_file=suite_file,
                        per_goal=per_goal, batch_size=batch_size, max_steps=max_steps,
                        seed=seed, temperature=temperature, proposals=proposals,
                        proposal_temperature=proposal_temperature, use_cache=not no_cache,
                        filter=filter_, filter_explanation=filter_explanation,
                        backbone=backbone, clamp=clamp, hold_zeros=hold_zeros,
                        device=device)
    try:
        stats = run_imagine(cfg)
    except (SuiteError, BackboneError, CheckpointMismatch, FileNotFoundError, ValueError,
            RuntimeError) as exc:
        _fail(exc)
    def pct(v, scale=100.0, fmt=".1f", unit="%"):  # None: this env cannot produce the number
        return "n/a" if v is None else f"{scale * v:{fmt}}{unit}"

    levels = stats["levels"]
    categories = sorted({k for r in levels.values() for k in r
                         if k.endswith("_pct") and k != "unrealistic_rollouts_pct"})
    units = next((r.get("state_error_units") for r in levels.values()), "")
    click.echo("| level | rollouts | self-judged match | replayed match (diagnostic) | "
               "random replay | " + "".join(f"{c[:-4].replace('_', ' ')} | " for c in categories)
               + f"state error{f' ({units})' if units else ''} |")
    click.echo("|---|---|---|---|---|" + "---|" * len(categories) + "---|")
    for level, r in levels.items():
        click.echo(f"| {level} | {r['rollouts']} | {pct(r['self_judged_match'])} | "
                   f"{pct(r['replayed_match'])} | {pct(r['random_replay_match'])} | "
                   + "".join(f"{pct(r.get(c), 1)} | " for c in categories)
                   + f"{pct(r['state_error_mean'], 1, '.3f', '')} |")
    if stats["skipped"]:
        click.echo(f"skipped {len(stats['skipped'])} goal(s): "
                   + json.dumps(stats["skipped"][:3]))
    click.echo(f"kept {stats['kept']} of {stats['generated']} rollouts -> {out}")


@main.command()
@click.option("--real", required=True, type=click.Path(dir_okay=False),
              help="Real episode file (the data the LLM was grounded on).")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Folder for dynamics.safetensors and dynamics.json.")
@click.option("--members", type=int, default=5, show_default=True)
@click.option("--hidden", type=int, default=256, show_default=True)
@click.option("--epochs", type=int, default=100, show_default=True,
              help="At most; early stopping on held-out episodes usually ends sooner.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--symmetric-copies", type=int, default=0, show_default=True,
              help="Extra copies of every training episode under random exact symmetries of "
                   "the env's physics (its `dynamics_symmetry`; CLEVR: balls relabelled, table "
                   "mirrored).")
def dynamics(real, out, members, hidden, epochs, seed, symmetric_copies) -> None:
    """Fit a dynamics ensemble on real transitions, to judge imagined rollouts without the
    simulator (`kalm relabel`)."""
    from kalm.data.episodes import EpisodeFileError, read_episodes
    from kalm.envs.registry import EnvError, get_env
    from kalm.imagination.dynamics import DynamicsConfig, DynamicsEnsemble

    try:
        data = read_episodes(real)
        definition = get_env(data.spec.env)
        ens = DynamicsEnsemble.fit(
            data, DynamicsConfig(members=members, hidden=hidden, epochs=epochs, seed=seed,
                                 symmetric_copies=symmetric_copies),
            bounds=definition.clamp_box(), symmetry=definition.dynamics_symmetry)
    except (EpisodeFileError, EnvError, ValueError) as exc:
        _fail(exc)
    ens.save(out)
    d = ens.describe()
    click.echo(f"wrote {out}: {members} members, held-out disagreement q99 "
               f"{ens.uncertainty_quantile(0.99):.3f}; {json.dumps(d.get('training', {}))[:200]}")


@main.command()
@click.argument("imagined_file", type=click.Path(dir_okay=False))
@click.option("--dynamics", "dynamics_dir", required=True, type=click.Path(file_okay=False),
              help="A dynamics ensemble folder (`kalm dynamics`).")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Output .h5 file.")
@click.option("--penalty", type=float, default=0.0, show_default=True,
              help="MOPO-style reward penalty: r - penalty * uncertainty.")
@click.option("--max-uncertainty-quantile", type=float, default=None,
              help="Truncate a rollout before the first step whose ensemble disagreement "
                   "exceeds this quantile of the held-out real disagreement (e.g. 0.99).")
@click.option("--min-votes", type=int, default=None,
              help="A success must also be reached by this many members rolling the actions "
                   "out on their own (default: the members' mean decides).")
@click.option("--keep", type=click.Choice(["all", "success"]), default="all",
              show_default=True,
              help="success: write only rollouts the ensemble judges successful (for BC).")
def relabel(imagined_file, dynamics_dir, out, penalty, max_uncertainty_quantile, min_votes,
            keep) -> None:
    """Re-simulate imagined actions through a dynamics ensemble and relabel success, rewards
    and terminals on its states (no simulator involved)."""
    from kalm.data.episodes import EpisodeFileError, read_episodes
    from kalm.imagination.dynamics import DynamicsEnsemble, DynamicsFileError
    from kalm.imagination.relabel import RelabelConfig, judge_quality, relabel_file

    try:
        spec = read_episodes(imagined_file).spec
        ens = DynamicsEnsemble.load(dynamics_dir, spec=spec)
        limit = (ens.uncertainty_quantile(max_uncertainty_quantile)
                 if max_uncertainty_quantile is not None else None)
        stats, episodes = relabel_file(imagined_file, ens, out,
                                       RelabelConfig(penalty=penalty, max_uncertainty=limit,
                                                     min_votes=min_votes),
                                       keep=keep)
    except (EpisodeFileError, DynamicsFileError, ValueError, RuntimeError) as exc:
        _fail(exc)
    click.echo(json.dumps(stats.to_json()))
    if episodes and all("replay_success" in e.extras for e in episodes):
        click.echo("judged successful vs replayed in the simulator (a diagnostic):")
        for name in ("self_success", "ensemble_success"):
            click.echo(f"  {name}: {json.dumps(judge_quality(episodes, name).to_json())}")
    click.echo(f"wrote {out}")


@main.command()
@click.option("--imagined", "imagined_files", multiple=True, required=True, metavar="LEVEL=FILE",
              help="Imagined episodes of `kalm imagine` (with the replay diagnostic) for a "
                   "level (repeatable).")
@click.option("--dynamics", "dynamics_dir", required=True, type=click.Path(file_okay=False),
              help="A dynamics ensemble folder (`kalm dynamics`).")
@click.option("--model", "model_dir", default=None, type=click.Path(file_okay=False),
              help="The grounded model that imagined them, for the signals read from it "
                   "(log-probability, its dynamics, its explanation); omit to skip those.")
@click.option("--real", default=None, type=click.Path(dir_okay=False),
              help="The real episodes the model was grounded on: its held-out split sets the "
                   "thresholds of the model's scores (required with --model).")
@click.option("--real-episodes", type=int, default=200, show_default=True,
              help="Held-out real episodes used for the thresholds.")
@click.option("--out", default=None, type=click.Path(dir_okay=False),
              help="JSON file for the table.")
def signals(imagined_files, dynamics_dir, model_dir, real, real_episodes, out) -> None:
    """Which simulator-free signal tells right imagined rollouts from wrong ones: precision,
    recall and AUROC of each against the simulator's replay (a diagnostic), per level."""
    from kalm.data.episodes import EpisodeFileError, read_episodes
    from kalm.envs.registry import EnvError, get_env
    from kalm.imagination.dynamics import DynamicsEnsemble, DynamicsFileError
    from kalm.imagination.signals import (
        compute_signals,
        format_rows,
        model_thresholds,
        signal_table,
    )
    from kalm.io import write_json

    if model_dir is not None and real is None:
        _fail(ValueError("--model needs --real (its held-out episodes set the thresholds)"))
    result: dict[str, list] = {}
    lines = ["| level | signal | kept | precision | recall | AUROC |", "|---|---|---|---|---|---|"]
    try:
        model = builder = thresholds = None
        if model_dir is not None:
            from kalm.llm.prompts import PromptBuilder
            from kalm.llm.saving import load_rollout_model
            from kalm.llm.train import split_episodes

            model, meta = load_rollout_model(model_dir)
            builder = PromptBuilder(model.tokenizer)
            real_data = read_episodes(real)
            trained = meta.get("train", {})
            n_val = int(trained.get("val_episodes", 0))
            if int(trained.get("episodes", -1)) + n_val != len(real_data):
                raise ValueError(f"{real}: {len(real_data)} episodes, but the model was "
                                 f"grounded on {trained.get('episodes')} + {n_val} held out "
                                 "(pass the file it was grounded on)")
            _, val = split_episodes(len(real_data), n_val / len(real_data),
                                    int(trained.get("seed", 0)))
            if not n_val:
                raise ValueError(f"{model_dir} was grounded without held-out episodes")
            thresholds = model_thresholds(
                model, builder, [real_data.episode(int(i)) for i in val[:real_episodes]])
        for item in imagined_files:
            level, sep, path = item.partition("=")
            if not sep or not path:
                raise ValueError(f"--imagined expects LEVEL=FILE, got {item!r}")
            data = read_episodes(path)
            definition = get_env(data.spec.env)
            episodes = data.episodes()
            if not all("replay_success" in e.extras and "self_success" in e.extras
                       for e in episodes):
                raise ValueError(f"{path}: needs the rollouts of `kalm imagine` with their "
                                 "replay diagnostic (replay_success, self_success)")
            ens = DynamicsEnsemble.load(dynamics_dir, spec=data.spec)
            rows = signal_table(episodes, compute_signals(episodes, definition, ens, model,
                                                          builder, thresholds))
            result[level] = rows
            lines += format_rows(level, rows)
    except (EpisodeFileError, DynamicsFileError, EnvError, ValueError, RuntimeError) as exc:
        _fail(exc)
    click.echo("\n".join(lines))
    if out:
        write_json(result, out)
        click.echo(f"wrote {out}")


ALGO_HELP = ("d3rlpy algorithm (paper hyper-parameters); the data's action type picks the "
             "version: bc, cql for either (discrete or continuous), bcq, sac discrete only, "
             "td3bc (the paper's for Meta-World), iql continuous only. Continuous cql is slow "
             "(hours per 100k steps on a CPU).")


@main.command()
@click.option("--algo", type=click.Choice(ALGOS), default="cql", show_default=True,
              help=ALGO_HELP)
@click.option("--real", required=True, type=click.Path(dir_okay=False),
              help="Real episode file.")
@click.option("--imagined", multiple=True, type=click.Path(dir_okay=False),
              help="Imagined episode file(s), mixed with the real data in every batch.")
@click.option("--imagined-ratio", type=float, default=0.5, show_default=True,
              help="Share of each batch drawn from the imagined data (1:1 = 0.5).")
@click.option("--steps", type=int, default=100_000, show_default=True)
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Policy folder (policy.d3, config, logs, checkpoints).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--save-every", type=int, default=10_000, show_default=True)
@click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
              help="YAML with TrainConfig fields (a `train:` section or top level).")
@click.option("--resume", is_flag=True, help="Continue from the last checkpoint in --out.")
def train(algo, real, imagined, imagined_ratio, steps, out, seed, save_every, config_file,
          resume) -> None:
    """Train a goal-conditioned offline-RL policy (d3rlpy) on real (+ imagined) episodes."""

    from kalm.config import ConfigError, from_dict, load_yaml
    from kalm.data.episodes import EpisodeFileError
    from kalm.rl.train import TrainConfig, train_policy

    overrides = {"real": real, "out": out, "imagined": list(imagined), "steps": steps,
                 "seed": seed, "imagined_ratio": imagined_ratio, "save_every": save_every,
                 "algo": {"algo": algo}}
    try:
        if config_file:
            import yaml

            raw = yaml.safe_load(Path(config_file).read_text()) or {}
            section = "train" if isinstance(raw, dict) and "train" in raw else None
            base = load_yaml(TrainConfig, config_file, section=section)
            from dataclasses import asdict

            merged = asdict(base)
            algo_cfg = {**merged["algo"], **overrides.pop("algo")}
            merged.update({k: v for k, v in overrides.items() if v not in (None, [])})
            merged["algo"] = algo_cfg
            cfg = from_dict(TrainConfig, merged)
        else:
            cfg = from_dict(TrainConfig, overrides)
        summary = train_policy(cfg, resume=resume)
    except (ConfigError, EpisodeFileError, FileNotFoundError, ValueError) as exc:
        _fail(exc)
    click.echo(json.dumps(summary, indent=2))
    click.echo(f"saved the policy to {Path(out) / 'policy.d3'}")


@main.command()
@click.option("--algo", type=click.Choice(ALGOS), default="cql", show_default=True,
              help=ALGO_HELP)
@click.option("--real", required=True, type=click.Path(dir_okay=False))
@click.option("--imagined", multiple=True, metavar="LEVEL=FILE",
              help="Imagined episodes for a level, e.g. rephrase=im-rephrase.h5 (repeatable).")
@click.option("--seeds", type=int, multiple=True, default=(0, 1, 2), show_default=True)
@click.option("--steps", type=int, default=100_000, show_default=True)
@click.option("--episodes", type=int, default=100, show_default=True,
              help="Evaluation episodes per level and seed.")
@click.option("--easy-episodes", type=int, default=200, show_default=True)
@click.option("--suite-file", type=click.Path(dir_okay=False), default=None,
              help="Evaluate on the levels of this suite instead of the built-in suites.")
@click.option("--levels", default="train,rephrase,easy,hard", show_default=True)
@click.option("--imagined-ratio", type=float, default=0.5, show_default=True,
              help="Share of each KALM batch drawn from the imagined data (1:1 = 0.5).")
@click.option("--workers", type=int, default=2, show_default=True)
@click.option("--env", default=None,
              help="Env the policies are evaluated in (default: the env the real data names).")
@click.option("--out", required=True, type=click.Path(file_okay=False))
def compare(algo, real, imagined, seeds, steps, episodes, easy_episodes, suite_file, levels,
            imagined_ratio, workers, env, out) -> None:
    """Real-only baseline vs KALM per level over seeds: table, JSON and bar plot (resumable)."""
    from kalm.data.episodes import EpisodeFileError, read_episodes
    from kalm.eval.compare import CompareConfig, run_compare

    if env is None:
        try:
            env = read_episodes(real).spec.env
        except (EpisodeFileError, OSError) as exc:
            _fail(exc)
    pairs = {}
    for item in imagined:
        level, sep, path = item.partition("=")
        if not sep or not path:
            _fail(ValueError(f"--imagined expects LEVEL=FILE, got {item!r}"))
        pairs[level] = path
    cfg = CompareConfig(real=real, out=out, imagined=pairs, algo=algo, seeds=list(seeds),
                        steps=steps, episodes=episodes, easy_episodes=easy_episodes,
                        suite_file=suite_file, levels=levels.split(","), workers=workers,
                        imagined_ratio=imagined_ratio, env=env)
    try:
        summary = run_compare(cfg)
    except (ValueError, FileNotFoundError) as exc:
        _fail(exc)
    from kalm.eval.compare import markdown_table

    click.echo(markdown_table(summary))
    click.echo(f"wrote {Path(out) / 'results.md'} and {Path(out) / 'results.png'}")


@main.command("check-suite")
@click.argument("suite_file", type=click.Path(dir_okay=False))
@click.option("--env", default="clevr", show_default=True,
              help="Environment whose goal checker validates the goals (see `kalm collect`).")
def check_suite(suite_file, env) -> None:
    """Validate a JSONL goal suite and summarise it (levels, goals, paraphrases)."""
    from kalm.data.suites import load_suite

    try:
        suite = load_suite(suite_file, env=env)
    except ValueError as exc:  # SuiteError, or an env string that does not load
        _fail(exc)
    for level in suite.levels:
        sub = suite.by_level(level)
        click.echo(f"{level}: {len(sub)} instructions, {len(sub.groups())} goals")


@main.command(context_settings={"ignore_unknown_options": False, "allow_extra_args": True})
@click.option("--config", "config_file", required=True, type=click.Path(dir_okay=False),
              help="Run config YAML, e.g. configs/clevr-quick.yaml.")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Run folder (default: runs/<name from the config>).")
@click.option("--seeds", default=None,
              help="RL seeds, overriding the config: --seeds 0 1 2 or --seeds 0,1,2.")
@click.option("--reference-rows", default=None,
              help="Rows beside KALM, overriding rl.reference_rows: a comma-separated subset "
                   "of paper, shooting, shooting_matched, planner_uniform, planner_llm, "
                   "llm_policy, expert, random and the diagnostic verified (added to a "
                   "finished run, only their stages run).")
@click.option("--dry-run", is_flag=True, help="Print the stages and whether each would run.")
@click.option("--smoke", is_flag=True,
              help="Run every stage for a step or two on a small slice (into OUT-smoke), e.g. to "
                   "check a paper-scale config on a small machine.")
@click.pass_context
def run(ctx, config_file, out, seeds, reference_rows, dry_run, smoke) -> None:
    """All stages, resumable: collect -> dynamics -> ground -> imagine -> label -> train ->
    evaluate -> report.

    Each stage writes OUT/<stage>/stage.json with its config, input hash, output checksums and
    wall time. Rerunning skips finished stages whose inputs are unchanged and resumes an
    interrupted one from its checkpoints; a stage whose config changed is moved aside (never
    deleted) and rerun with everything after it.
    """
    from kalm.config import ConfigError
    from kalm.pipeline import load_run_config, run_pipeline

    seed_list = None
    if seeds is not None:
        try:
            seed_list = [int(x) for x in [*seeds.replace(",", " ").split(), *ctx.args]]
        except ValueError:
            _fail(ValueError(f"--seeds expects integers, got {[seeds, *ctx.args]}"))
    elif ctx.args:
        _fail(ValueError(f"unexpected arguments {ctx.args}"))
    try:
        rows = None if reference_rows is None else [
            r for r in reference_rows.replace(" ", ",").split(",") if r]
        cfg = load_run_config(config_file, out=out, seeds=seed_list, reference_rows=rows)
    except ConfigError as exc:
        _fail(exc)
    if smoke:
        cfg = cfg.smoke()
    if dry_run:
        from kalm.pipeline import Runner, build_stages

        runner = Runner(cfg.run_dir)
        for stage in build_stages(cfg):
            state, _ = runner.state(stage)
            runner.hashes[stage.name] = runner.stage_hash(stage)
            click.echo(f"{stage.name:28s} {runner.hashes[stage.name][:8]}  {state}")
        return
    from kalm.pipeline import RunFolderBusy

    try:
        run_pipeline(cfg)
    except (ConfigError, FileNotFoundError, RunFolderBusy) as exc:
        _fail(exc)


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False, exists=True))
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Report folder (default: RUN_DIR/report).")
def report(run_dir, out) -> None:
    """Write RUN_DIR/report/report.md and report.html from the files of a `kalm run` folder."""
    from kalm.eval.report import write_report

    try:
        md, html = write_report(run_dir, out)
    except (FileNotFoundError, ValueError) as exc:
        _fail(exc)
    click.echo(f"wrote {md} and {html}")


if __name__ == "__main__":
    main()
