"""Grounding, imagination and the LLM-as-policy baseline keep every tensor on the model's device.

There is no GPU here, so the test simulates one. `SimulatedDevice` is a torch function mode that
gives every tensor a placement, exactly as CUDA would: a tensor is on the "accelerator"
(`SIM = cpu:0`, a real device torch accepts, distinct from the host's plain `cpu`) when it was
created with `device=SIM`, moved there with `.to(SIM)` (or `.to(tensor_on_SIM)`), is a model
weight moved there by `model.to(SIM)`, or comes out of an op on such tensors; anything else (a
factory call without a device, `torch.from_numpy`, `.cpu()`) is on the host. An op that mixes an
accelerator tensor with a non-scalar host tensor, or `.numpy()` of an accelerator tensor, raises,
as it would on a GPU. `x.device` of an accelerator tensor answers SIM, so code that follows the
model's device moves its inputs there; code that forgets `.to(device)` crashes here as it did on
the H200.
"""

from __future__ import annotations

import json
import types

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils import _pytree as pytree

from kalm.data.episodes import (
    EnvSpecInfo,
    Episode,
    EpisodeData,
    read_episodes,
    write_episodes,
)
from kalm.llm.backbone import tiny_backbone
from kalm.llm.model import ModelConfig
from kalm.llm.saving import AdapterConfig, build_rollout_model
from kalm.llm.train import GroundConfig, clevr_spec, ground

SIM = torch.device("cpu", 0)
GOAL = {"kind": "relation", "object": "red", "reference": "blue", "direction": "left"}
_FLAG = "_kalm_on_sim"
_CROSS_DEVICE_OK = {"copy_"}  # CUDA copies across devices in these
_METADATA = {"size", "dim", "numel", "stride", "data_ptr", "element_size", "__len__"}
_INDEXING = {"__getitem__", "__setitem__", "index_put_", "index_put"}


class DeviceMismatch(RuntimeError):
    pass


def on_sim(t: torch.Tensor) -> bool:
    return bool(getattr(t, _FLAG, False))


def _mark(t: torch.Tensor, flag: bool) -> torch.Tensor:
    setattr(t, _FLAG, flag)
    return t


class SimulatedDevice(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.sim_ops = 0  # ops that ran on the simulated accelerator (the test must use it)

    def __torch_function__(self, func, types_, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        owner = getattr(func, "__self__", None)
        if isinstance(owner, types.GetSetDescriptorType):  # tensor attributes
            attr, target = owner.__name__, args[0]
            if name == "__get__" and attr == "device" and on_sim(target):
                return SIM
            out = func(*args, **kwargs)
            if name == "__get__" and attr in ("grad", "data") and isinstance(out, torch.Tensor):
                _mark(out, on_sim(target) or on_sim(out))
            if name == "__set__" and attr == "data":  # Module.to swaps parameter data
                _mark(target, on_sim(args[1]))
            return out
        if name == "numpy" and on_sim(args[0]):
            raise DeviceMismatch("numpy() of a tensor on the accelerator: call .cpu() first")
        if name in ("to", "cpu", "cuda") and isinstance(args[0], torch.Tensor):
            src = args[0]
            dest = self._destination(name, src, args[1:], kwargs)
            out = func(*args, **kwargs)
            if out is src and dest != on_sim(src):
                out = out.view_as(out)  # the moved tensor is a new one; the original stays
            return _mark(out, dest)
        tensors = [t for t in pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        sim = [t for t in tensors if on_sim(t)]
        if sim and name not in _CROSS_DEVICE_OK and name not in _METADATA and not \
                name.startswith(("is_", "_has_")):
            checked = tensors
            if name in _INDEXING:  # CUDA accepts host index tensors; check the data only
                checked = [args[0], *args[2:3]]
            host = [t for t in checked if isinstance(t, torch.Tensor) and not on_sim(t)
                    and t.dim() > 0]  # host scalars are allowed, as on CUDA
            if host:
                raise DeviceMismatch(
                    f"{getattr(func, '__qualname__', func)} mixes accelerator tensors with host "
                    f"tensor(s) of shape {[tuple(t.shape) for t in host]}")
        out = func(*args, **kwargs)
        device = kwargs.get("device")
        dest = torch.device(device) == SIM if device is not None else bool(sim)
        self.sim_ops += dest
        for t in pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor):
                _mark(t, dest)
        return out

    @staticmethod
    def _destination(name: str, src: torch.Tensor, args, kwargs) -> bool:
        if name == "cpu":
            return False
        if name == "cuda":
            raise DeviceMismatch("kalm asked for .cuda() instead of the model's device")
        for a in [*args, *kwargs.values()]:
            if isinstance(a, torch.Tensor):  # x.to(other): other's device
                return on_sim(a)
        device = torch._C._nn._parse_to(*args, **kwargs)[0]
        return on_sim(src) if device is None else device == SIM



@pytest.fixture
def sim():
    with SimulatedDevice() as mode:
        yield mode


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_backbone().tokenizer


def _episodes(n: int = 10, seed: int = 0) -> EpisodeData:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        k = int(rng.integers(1, 4))
        obs = rng.uniform(-0.4, 0.4, (k + 1, 10)).astype(np.float32)
        term = np.zeros(k, bool)
        term[-1] = True
        out.append(Episode(obs, rng.integers(0, 40, k), np.zeros(k, np.float32), term,
                           "Put the red ball left of the blue ball", GOAL))
    return EpisodeData.from_episodes(out, EnvSpecInfo("clevr", 10, "discrete", 40))


def _sim_model(tokenizer, device: torch.device | None = SIM):
    """A seeded tiny rollout model on `device` (None: left on the host)."""
    torch.manual_seed(0)
    model = build_rollout_model(tiny_backbone(tokenizer=tokenizer), clevr_spec(), ModelConfig(),
                                AdapterConfig(mode="lora", lora_r=4))
    model.set_normalizer(torch.zeros(10), torch.full((10,), 0.3))
    return (model if device is None else model.to(device)).eval()


def test_the_simulated_device_catches_a_forgotten_move(tokenizer, sim):
    """The check itself: what crashed on the GPU crashes here."""
    model = _sim_model(tokenizer)
    ids = torch.zeros(1, 3, dtype=torch.long)  # built on the host, never moved
    with pytest.raises(DeviceMismatch):
        model.embed_tokens(ids)
    assert model.embed_tokens(ids.to(SIM)).device == SIM
    with pytest.raises(DeviceMismatch):
        model.state_mean.numpy()
    model.state_mean.cpu().numpy()
    x = torch.ones(2).to(SIM)
    with pytest.raises(DeviceMismatch):
        torch.cat([x, torch.ones(2)])


def test_ground_with_validation_and_metrics_stays_on_the_device(tmp_path, tokenizer, sim,
                                                                 monkeypatch):
    from accelerate import Accelerator

    monkeypatch.setattr(Accelerator, "device", property(lambda self: SIM))
    write_episodes(_episodes(), tmp_path / "real.h5")
    cfg = GroundConfig(data=str(tmp_path / "real.h5"), out=str(tmp_path / "g"), steps=3,
                       batch_size=4, paraphrase_suite="", eval_every=1, eval_episodes=2,
                       save_every=2, metrics_episodes=3, explain_episodes=2, bf16=False,
                       device="cpu", adapter=AdapterConfig(lora_r=4))
    result = ground(cfg, backbone=tiny_backbone(tokenizer=tokenizer), progress=False)
    assert result["steps"] == 3 and "explanation" in result
    assert result["device"] == str(SIM)  # trained on the (simulated) accelerator
    assert sim.sim_ops > 0
    # the validation losses ran at every step (eval_every=1), on the device
    log = [json.loads(x) for x in (tmp_path / "g" / "metrics.jsonl").read_text().splitlines()]
    assert sorted(r["step"] for r in log if r["split"] == "val") == [1, 2, 3]
    assert sorted(p.name for p in (tmp_path / "g" / "checkpoints").glob("step-*.pt")) == [
        "step-0000002.pt", "step-0000003.pt"]  # save_every=2 and the last step
    # the same metrics, recomputed on the host from the saved model, agree with the device's:
    # the device path changes where tensors live, not what is computed
    from kalm.llm.metrics import grounding_metrics
    from kalm.llm.saving import load_rollout_model
    from kalm.llm.train import Grounder

    g = Grounder(cfg, backbone=tiny_backbone(tokenizer=tokenizer))
    assert result["val_episodes"] == min(3, len(g.val_data)) > 0
    host, _ = load_rollout_model(tmp_path / "g", backbone=tiny_backbone(tokenizer=tokenizer))
    assert not on_sim(host.state_mean)
    again = grounding_metrics(host, g.builder, g.val_data, g.paraphrases, max_episodes=3,
                              explain_episodes=2)
    for part in ("rollout_teacher_forced", "dynamics", "consequence"):
        assert set(again[part]) == set(result[part]), part
        for key, value in result[part].items():
            assert again[part][key] == pytest.approx(value, rel=1e-4, abs=1e-6), (part, key)
    tf = result["rollout_teacher_forced"]
    assert 0.0 <= tf["action_accuracy"] <= 1.0 and tf["mse_normalised"] > 0
    assert again["explanation"]["accuracy"] == result["explanation"]["accuracy"]


def test_imagine_and_llm_policy_stay_on_the_device(tmp_path, tokenizer, sim):
    from kalm.data.rollout import run_episode
    from kalm.envs.clevr.env import CLEVRRobotEnv
    from kalm.eval.llm_policy import LLMPolicy
    from kalm.imagination.stage import ImagineConfig, imagine

    model = _sim_model(tokenizer)
    suite = tmp_path / "s.jsonl"
    suite.write_text(json.dumps({"instruction": "Red left of blue.", "level": "rephrase",
                                 "goal": GOAL}) + "\n")
    def run_imagine(name, m):
        return imagine(ImagineConfig(out=str(tmp_path / name), suite_file=str(suite),
                                     per_goal=3, max_steps=3, temperature=1.0, batch_size=2),
                       model=m, progress=False)

    stats = run_imagine("im.h5", model)
    assert stats["generated"] == 3
    ops = sim.sim_ops
    assert ops > 0
    imagined = read_episodes(tmp_path / "im.h5")
    assert len(imagined) == 3 and imagined.lengths.max() <= 3
    for i in range(3):
        ep = imagined.episode(i)
        assert ep.observations.shape == (ep.length + 1, 10)
        assert np.isfinite(ep.observations).all() and ep.goal == GOAL
        assert ((ep.actions >= 0) & (ep.actions < 40)).all()
    # the same seeded sampling with the same weights on the host: the same rollouts
    host = _sim_model(tokenizer, device=None)
    assert not on_sim(host.state_mean)
    run_imagine("host.h5", host)
    assert sim.sim_ops == ops  # nothing of the host run touched the device
    plain = read_episodes(tmp_path / "host.h5")
    assert np.array_equal(plain.lengths, imagined.lengths)
    for i in range(3):
        a, b = plain.episode(i), imagined.episode(i)
        assert np.array_equal(a.actions, b.actions)
        np.testing.assert_allclose(a.observations, b.observations, rtol=1e-5, atol=1e-6)

    policy = LLMPolicy("unused", model=model)
    ep = run_episode(CLEVRRobotEnv(), policy, GOAL, "Put red left of blue.", seed=1)
    assert 1 <= ep.length == len(ep.actions) == len(ep.observations) - 1
    assert ((ep.actions >= 0) & (ep.actions < 40)).all()
    assert sim.sim_ops > ops


def test_device_resolution():
    from kalm.llm.device import model_device, resolve_device

    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="not a torch device"):
        resolve_device("gpu-please")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA"):
            resolve_device("cuda")
    assert model_device(torch.nn.Linear(2, 2)) == torch.device("cpu")
    assert resolve_device(None) == resolve_device("auto")
    assert resolve_device(torch.device("cpu", 0)) == torch.device("cpu", 0)


def test_model_device_and_to_device_follow_the_weights(sim):
    from kalm.llm.device import model_device, to_device

    layer = torch.nn.Linear(3, 2).to(SIM)
    assert model_device(layer) == SIM
    batch = {"x": torch.ones(4, 3), "ids": torch.arange(4)}
    moved = to_device(batch, model_device(layer))
    assert set(moved) == {"x", "ids"} and all(on_sim(v) for v in moved.values())
    assert not any(on_sim(v) for v in batch.values())  # the host batch is left as it was
    assert torch.equal(moved["ids"].cpu(), torch.arange(4))
    assert layer(moved["x"]).shape == (4, 2)
    with pytest.raises(DeviceMismatch):
        layer(batch["x"])


def test_bf16_choice_forced_or_measured(monkeypatch):
    from kalm.llm import device as dev

    cpu = torch.device("cpu")
    assert dev.resolve_bf16(True, cpu) == (True, {"device": "cpu", "use_bf16": True,
                                                  "reason": "forced"})
    assert dev.resolve_bf16(False, cpu)[0] is False
    for bad in ("yes", "true", 1, None):
        with pytest.raises(ValueError, match="true, false or auto"):
            dev.resolve_bf16(bad, cpu)
    # `auto` on a CPU measures: bf16 only when it beats fp32 by more than BF16_MIN_SPEEDUP
    measured: list[bool] = []
    speeds = {False: 100.0, True: 105.0}  # 1.05x: noise, not a speed-up

    def fake_gflops(device, bf16, size=dev.PROBE_SIZE, reps=2):
        measured.append(bf16)
        return speeds[bf16]

    monkeypatch.setattr(dev, "matmul_gflops", fake_gflops)
    monkeypatch.setattr(dev, "_PROBE_CACHE", {})
    use, info = dev.resolve_bf16("auto", cpu)
    assert use is False and info["fp32_gflops"] == 100.0 and info["bf16_gflops"] == 105.0
    assert "is not" in info["reason"] and sorted(measured) == [False, True]
    speeds[True] = 150.0  # the probe ran once per process: the cached answer stands
    assert dev.resolve_bf16("auto", cpu) == (False, info) and len(measured) == 2
    monkeypatch.setattr(dev, "_PROBE_CACHE", {})
    use, info = dev.resolve_bf16("auto", cpu)
    assert use is True and info["use_bf16"] is True and len(measured) == 4
