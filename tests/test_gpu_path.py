"""The CPU half of the GPU route (scripts/gpu_ground.py, docs/gpu.md): parts and checksums, and
the device's grounding entry running without the simulator and writing only small files."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import gpu_ground  # noqa: E402


def test_split_receive_assemble_with_checksums(tmp_path):
    blob = np.random.default_rng(0).bytes(2500)
    (tmp_path / "weights.gguf").write_bytes(blob)
    parts = tmp_path / "parts"
    manifest = gpu_ground.split_file(tmp_path / "weights.gguf", parts, 1024)
    assert [p["size"] for p in manifest["parts"]] == [1024, 1024, 452]
    # the first call carries part 0 only; the store outlives the call
    first = tmp_path / "call1"
    first.mkdir()
    for name in (gpu_ground.MANIFEST, "part-000"):
        (first / name).write_bytes((parts / name).read_bytes())
    store = tmp_path / "store"
    assert gpu_ground.receive_parts(first, store) == ["part-001", "part-002"]
    with pytest.raises(FileNotFoundError, match="part-001"):
        gpu_ground.assemble(store, tmp_path / "out")
    # a part damaged in transit is refused, not stored
    second = tmp_path / "call2"
    second.mkdir()
    (second / gpu_ground.MANIFEST).write_bytes((parts / gpu_ground.MANIFEST).read_bytes())
    (second / "part-001").write_bytes(b"x" + (parts / "part-001").read_bytes()[1:])
    with pytest.raises(ValueError, match="damaged"):
        gpu_ground.receive_parts(second, store)
    assert gpu_ground.receive_parts(parts, store) == []
    out = gpu_ground.assemble(store, tmp_path / "out")
    assert out.name == "weights.gguf" and out.read_bytes() == blob
    # a part that rotted in the store after its check: the whole-file checksum catches it
    out.unlink()
    (store / "part-002").write_bytes(b"y" * 452)
    with pytest.raises(ValueError, match="SHA-256"):
        gpu_ground.assemble(store, tmp_path / "out")


_WITHOUT_SIMULATOR = """
import importlib.abc, runpy, sys
class Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in ("mujoco", "d3rlpy", "gymnasium", "gym"):
            raise ModuleNotFoundError(f"No module named {name!r}")
sys.meta_path.insert(0, Absent())
sys.argv = ["gpu_ground.py", *sys.argv[1:]]
runpy.run_path("scripts/gpu_ground.py", run_name="__main__")
assert "kalm.llm.train" in sys.modules and not {"mujoco", "d3rlpy"} & set(sys.modules)
"""


def test_device_entry_grounds_without_the_simulator_and_returns_small_files(tmp_path):
    import torch

    from kalm.config import to_dict
    from kalm.data.episodes import EnvSpecInfo, Episode, EpisodeData, write_episodes
    from kalm.llm.backbone import tiny_backbone
    from kalm.llm.saving import AdapterConfig
    from kalm.llm.train import GroundConfig, clevr_spec

    backbone = tiny_backbone()
    backbone.model.save_pretrained(tmp_path / "tiny")
    backbone.tokenizer.save_pretrained(tmp_path / "tiny")
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    rng = np.random.default_rng(0)
    goal = {"kind": "relation", "object": "red", "reference": "blue", "direction": "left"}
    eps = [Episode(rng.uniform(-0.4, 0.4, (3, 10)).astype(np.float32), np.array([1, 2]),
                   np.zeros(2, np.float32), np.array([False, True]), "Red left of blue.", goal)
           for _ in range(8)]
    write_episodes(EpisodeData.from_episodes(eps, EnvSpecInfo("clevr", 10, "discrete", 40)),
                   inputs / "real.h5")
    (inputs / "spec.json").write_text(json.dumps(asdict(clevr_spec())))
    (inputs / "paraphrases.json").write_text(json.dumps({}))
    cfg = GroundConfig(backbone=str(tmp_path / "tiny"), steps=2, batch_size=4, bf16=False,
                       device="cpu", paraphrase_suite="", metrics_episodes=2,
                       explain_episodes=1, save_every=1, adapter=AdapterConfig(lora_r=4))
    (inputs / "ground.json").write_text(json.dumps(to_dict(cfg)))
    out, work = tmp_path / "OUT" / "ground", tmp_path / "work"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1",
           "KALM_CACHE": str(tmp_path / "cache")}
    done = subprocess.run(
        [sys.executable, "-c", _WITHOUT_SIMULATOR, "ground", "--inputs", str(inputs),
         "--out", str(out), "--work", str(work)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    returned = sorted(p.name for p in out.iterdir())
    assert returned == sorted(gpu_ground.SMALL_OUTPUTS)
    assert sum(p.stat().st_size for p in out.iterdir()) < 2 << 20  # the adapter, not the LM
    assert list((work / "checkpoints").glob("step-*.pt"))  # checkpoints stay on the machine
    metrics = json.loads((out / "grounding_metrics.json").read_text())
    assert metrics["steps"] == 2 and "skipped" in metrics["explanation"]
    assert metrics["dtype"] == "float32" and metrics["device"] == "cpu"
    from safetensors.torch import load_file

    from kalm.data.episodes import read_episodes
    from kalm.llm.batching import Paraphrases
    from kalm.llm.saving import load_rollout_model
    from kalm.llm.train import ground, split_episodes, state_statistics

    model, meta = load_rollout_model(out, backbone=tiny_backbone(tokenizer=backbone.tokenizer))
    assert meta["train"]["steps_done"] == 2
    # the spec the device was handed (no env there), not one it made up
    assert meta["spec"] == json.loads((inputs / "spec.json").read_text())
    # the normaliser is the training split's statistics of the episodes sent
    data = read_episodes(inputs / "real.h5")
    train_idx, val_idx = split_episodes(len(data), cfg.val_fraction, cfg.seed)
    mean, std = state_statistics(data.subset(train_idx))
    np.testing.assert_allclose(model.state_mean.numpy(), mean, rtol=1e-6)
    np.testing.assert_allclose(model.state_std.numpy(), std, rtol=1e-6)
    assert meta["train"]["episodes"] == len(train_idx)
    assert metrics["val_episodes"] == min(cfg.metrics_episodes, len(val_idx)) > 0
    # the returned weights are the last checkpoint's, which stays on the machine
    returned = load_file(str(out / "weights.safetensors"))
    last = torch.load(work / "checkpoints" / "step-0000002.pt", weights_only=False)
    assert last["step"] == 2 and set(returned) == set(last["model"])
    for name, value in returned.items():
        assert torch.equal(value, last["model"][name]), name
    # the small files describe this run: its config and a train record per step
    sent = json.loads((out / "ground_config.json").read_text())
    assert sent["data"] == str(inputs / "real.h5") and sent["steps"] == 2
    log = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if r["split"] == "train"] == [1, 2]
    # the plain in-process path on the same inputs trains the same adapter and measures the
    # same teacher-forced metrics (threads may reorder float sums: close, not bitwise)
    cfg_plain = dataclasses.replace(cfg, data=str(inputs / "real.h5"),
                                    out=str(tmp_path / "plain"))
    plain = ground(cfg_plain, spec=clevr_spec(), paraphrases=Paraphrases({}), progress=False)
    mine = load_file(str(tmp_path / "plain" / "weights.safetensors"))
    assert set(mine) == set(returned)
    for name, value in returned.items():
        torch.testing.assert_close(mine[name], value, rtol=1e-3, atol=1e-4, msg=name)
    for part in ("rollout_teacher_forced", "dynamics", "consequence"):
        assert set(plain[part]) == set(metrics[part]), part
        for key, value in metrics[part].items():
            assert plain[part][key] == pytest.approx(value, rel=1e-3, abs=1e-5), (part, key)


@pytest.mark.parametrize("name", ["clevr-gpu", "clevr-quick", "clevr-paper"])
def test_run_configs_load(name):
    from kalm.pipeline import load_run_config

    cfg = load_run_config(ROOT / "configs" / f"{name}.yaml")
    if name == "clevr-gpu":
        assert cfg.ground.budget_minutes is not None and cfg.ground.budget_minutes <= 8
        assert cfg.ground.bf16 == "auto" and cfg.ground.batch_size >= 64
    if name == "clevr-quick":
        assert cfg.ground.bf16 == "auto" and cfg.ground.budget_minutes is not None
    if name == "clevr-paper":
        assert cfg.ground.budget_minutes is None and cfg.ground.epochs == 10
