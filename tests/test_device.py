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

import types

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils import _pytree as pytree

from kalm.data.episodes import EnvSpecInfo, Episode, EpisodeData, write_episodes
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


def _sim_model(tokenizer):
    torch.manual_seed(0)
    model = build_rollout_model(tiny_backbone(tokenizer=tokenizer), clevr_spec(), ModelConfig(),
                                AdapterConfig(mode="lora", lora_r=4))
    model.set_normalizer(torch.zeros(10), torch.full((10,), 0.3))
    return model.to(SIM).eval()


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
    assert result["rollout_teacher_forced"]["mse_normalised"] >= 0
    assert sim.sim_ops > 0


def test_imagine_and_llm_policy_stay_on_the_device(tmp_path, tokenizer, sim):
    import json

    from kalm.data.rollout import run_episode
    from kalm.envs.clevr.env import CLEVRRobotEnv
    from kalm.eval.llm_policy import LLMPolicy
    from kalm.imagination.stage import ImagineConfig, imagine

    model = _sim_model(tokenizer)
    suite = tmp_path / "s.jsonl"
    suite.write_text(json.dumps({"instruction": "Red left of blue.", "level": "rephrase",
                                 "goal": GOAL}) + "\n")
    stats = imagine(ImagineConfig(out=str(tmp_path / "im.h5"), suite_file=str(suite),
                                  per_goal=3, max_steps=3, temperature=1.0, batch_size=2),
                  model=model, progress=False)
    assert stats["generated"] == 3
    policy = LLMPolicy("unused", model=model)
    ep = run_episode(CLEVRRobotEnv(), policy, GOAL, "Put red left of blue.", seed=1)
    assert ep.length >= 1
    assert sim.sim_ops > 0


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
