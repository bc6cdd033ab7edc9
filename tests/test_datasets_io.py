"""Episode files in and out: Minari and d3rlpy round trips, KALM's and ImagineBench's published
layouts (small files written here), malformed files naming the field, pickles refused."""

import json
import warnings

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from kalm.cli import main
from kalm.data.episodes import (
    EnvSpecInfo,
    Episode,
    EpisodeData,
    EpisodeFileError,
    read_episodes,
    write_episodes,
)
from kalm.data.formats.published import PickleRefused, import_published
from kalm.envs.clevr.published import goal_from_vector
from kalm.envs.metaworld.published import goal_from_task_name

CLEVR = EnvSpecInfo("clevr", 10, "discrete", 40)
MW = EnvSpecInfo("metaworld", 91, "continuous", 4)
RELATION = {"kind": "relation", "object": "red", "reference": "blue", "direction": "left"}


def _episode(rng, spec, n, terminal, k, successes=None):
    term = np.zeros(n, bool)
    term[-1] = terminal
    acts = (rng.integers(0, spec.action_dim, n) if spec.action_type == "discrete"
            else rng.uniform(-1, 1, (n, spec.action_dim)).astype(np.float32))
    goal = RELATION if spec.env == "clevr" else {"kind": "task", "task": "reach"}
    return Episode(rng.uniform(-0.4, 0.4, (n + 1, spec.obs_dim)).astype(np.float32), acts,
                   rng.normal(size=n).astype(np.float32), term, f"instruction {k} ü", goal,
                   extras={"quality": 0.25 * k, "realistic": bool(k % 2), "level": f"lvl{k}",
                           "state_errors": rng.normal(size=3).astype(np.float32)},
                   successes=successes)


def _file(tmp_path, spec=CLEVR, successes=False, name="data.h5"):
    """A file as kalm writes it: terminals and timeouts, extras of four dtypes, attributes, and
    a padded width beyond the longest episode (a subset of a longer file)."""
    rng = np.random.default_rng(0)
    lengths, ends = (3, 1, 5, 7), (True, True, False, False)
    eps = []
    for k, (n, end) in enumerate(zip(lengths, ends, strict=True)):
        succ = None
        if successes:
            succ = np.zeros(n, bool)
            succ[-1] = end or k == 2  # a success in an episode that timed out (Meta-World)
        eps.append(_episode(rng, spec, n, end, k, succ))
    data = EpisodeData.from_episodes(eps, spec, source="imagined",
                                     attrs={"policy": "expert", "seed": 3, "epsilon": 0.1})
    path = write_episodes(data.subset([0, 1, 2]), tmp_path / name)
    return read_episodes(path), path


def _assert_same(a: EpisodeData, b: EpisodeData) -> None:
    for name in ("observations", "actions", "rewards", "terminals", "lengths"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and x.shape == y.shape, name
        np.testing.assert_array_equal(x, y, err_msg=name)
    if a.successes is None:
        assert b.successes is None
    else:
        np.testing.assert_array_equal(a.successes, b.successes)
    assert a.spec == b.spec and a.source == b.source
    assert a.instructions == b.instructions and a.goals == b.goals
    assert a.attrs == b.attrs
    assert sorted(a.extras) == sorted(b.extras)
    for key in a.extras:
        assert a.extras[key].dtype.kind == b.extras[key].dtype.kind, key
        if a.extras[key].dtype.kind != "U":
            assert a.extras[key].dtype == b.extras[key].dtype, key
        np.testing.assert_array_equal(a.extras[key], b.extras[key], err_msg=key)


# ---------------------------------------------------------------------------- Minari
@pytest.fixture
def minari_root(tmp_path, monkeypatch):
    pytest.importorskip("minari")
    root = tmp_path / "minari"
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(root))
    return root


@pytest.mark.parametrize("spec", [CLEVR, MW], ids=["clevr", "metaworld"])
def test_minari_round_trip_loses_nothing(tmp_path, minari_root, spec):
    import minari

    from kalm.data.formats.minari_io import export_minari, import_minari

    data, _ = _file(tmp_path, spec, successes=spec is MW)
    export_minari(data, "kalm/test-real-v0")
    assert (minari_root / "kalm" / "test-real-v0").is_dir()
    ds = minari.load_dataset("kalm/test-real-v0")  # plain Minari reads it
    assert ds.total_episodes == 3 and ds.total_steps == data.num_transitions
    episodes = list(ds.iterate_episodes())
    for i, ep in enumerate(episodes):
        n = int(data.lengths[i])
        assert len(ep.observations) == n + 1 and len(ep.actions) == n
        assert ep.terminations.tolist() == data.terminals[i, :n].tolist()
        assert ep.truncations[:-1].sum() == 0
        assert bool(ep.truncations[-1]) == (not data.terminals[i, n - 1])  # a timeout
        if spec is MW:
            assert ep.infos["is_success"].tolist() == [False, *data.successes[i, :n]]
    meta = list(ds.storage.get_episode_metadata(range(3)))
    assert meta[0]["instruction"] == "instruction 0 ü"
    assert json.loads(meta[0]["goal"]) == data.goals[0]
    assert ds.storage.metadata["kalm"]["source"] == "imagined"
    env = ds.recover_environment()
    assert env.spec.id == ("kalm/CLEVRRobot-v0" if spec is CLEVR else "kalm/MetaWorld-v0")
    env.close()

    back = import_minari("kalm/test-real-v0")
    path = write_episodes(back, tmp_path / "back.h5")
    _assert_same(data, read_episodes(path))


def test_minari_cli_round_trip_and_overwrite(tmp_path, minari_root):
    data, path = _file(tmp_path)
    runner = CliRunner()
    args = ["export", "--format", "minari", str(path), "--id", "kalm/clevr-im-v1"]
    res = runner.invoke(main, args)
    assert res.exit_code == 0, res.output
    res = runner.invoke(main, args)
    assert res.exit_code == 2 and "overwrite" in res.output
    assert runner.invoke(main, [*args, "--overwrite"]).exit_code == 0
    out = tmp_path / "back.h5"
    res = runner.invoke(main, ["import", "--format", "minari", "kalm/clevr-im-v1",
                               "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "1 at a timeout" in res.output
    _assert_same(data, read_episodes(out))
    # a dataset folder works as well as an id
    res = runner.invoke(main, ["import", "--format", "minari",
                               str(minari_root / "kalm" / "clevr-im-v1"), "--out", str(out)])
    assert res.exit_code == 0, res.output
    res = runner.invoke(main, ["import", "--format", "minari", "kalm/missing-v0",
                               "--out", str(out)])
    assert res.exit_code == 2 and "no local Minari dataset 'kalm/missing-v0'" in res.output


def test_minari_dataset_from_elsewhere_needs_the_env(tmp_path, minari_root):
    import gymnasium as gym
    import minari
    from minari.data_collector import EpisodeBuffer

    from kalm.data.formats.minari_io import import_minari

    rng = np.random.default_rng(5)
    buffers = [EpisodeBuffer(observations=rng.uniform(-0.4, 0.4, (n + 1, 10)).astype(np.float32),
                             actions=rng.integers(0, 40, n), rewards=np.ones(n),
                             terminations=np.arange(n) == n - 1, truncations=np.zeros(n, bool),
                             infos={})
               for n in (2, 3)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no env spec
        minari.create_dataset_from_buffers(
            "other/balls-v0", buffers,
            observation_space=gym.spaces.Box(-1, 1, (10,), np.float32),
            action_space=gym.spaces.Discrete(40), author="x", author_email="x",
            code_permalink="x", algorithm_name="x", description="x")
    with pytest.raises(EpisodeFileError, match=r"not written by kalm.*--env"):
        import_minari("other/balls-v0")
    data = import_minari("other/balls-v0", env="clevr")
    assert data.lengths.tolist() == [2, 3] and data.terminals[1, 2]
    assert data.instructions == ["", ""] and data.goals == [{}, {}]
    assert data.attrs == {"minari_dataset": "other/balls-v0"}


# ---------------------------------------------------------------------------- d3rlpy
def test_d3rlpy_file_holds_the_same_transitions_terminals_and_timeouts(tmp_path):
    from d3rlpy.dataset import InfiniteBuffer, ReplayBuffer

    data, path = _file(tmp_path)
    out = tmp_path / "real.d3rlpy.h5"
    res = CliRunner().invoke(main, ["export", "--format", "d3rlpy", str(path), "--out",
                                    str(out)])
    assert res.exit_code == 0, res.output
    with out.open("rb") as f:  # d3rlpy alone
        buffer = ReplayBuffer.load(f, InfiniteBuffer())
    assert len(buffer.episodes) == len(data)
    for i, ep in enumerate(buffer.episodes):
        n = int(data.lengths[i])
        terminal = bool(data.terminals[i, n - 1])
        assert ep.terminated == terminal
        assert ep.transition_count == n
        rows = n if terminal else n + 1  # a timeout keeps its final state
        np.testing.assert_array_equal(ep.observations, data.observations[i, :rows])
        np.testing.assert_array_equal(ep.actions[:n, 0], data.actions[i, :n])
        np.testing.assert_array_equal(ep.rewards[:n, 0], data.rewards[i, :n])
        for t in range(n):
            tr = buffer.transition_picker(ep, t)
            assert tr.terminal == float(terminal and t == n - 1)
            expected = (np.zeros(10) if tr.terminal else data.observations[i, t + 1])
            np.testing.assert_array_equal(tr.next_observation, expected)
    info = json.loads((tmp_path / "real.d3rlpy.h5.json").read_text())
    assert info["terminated_episodes"] == 2 and info["timeout_episodes"] == 1
    assert info["obs_dim"] == 10 and not info["with_instruction_embedding"]


def test_d3rlpy_export_with_the_policy_instruction_embedding(tmp_path):
    from d3rlpy.dataset import InfiniteBuffer, ReplayBuffer

    from kalm.rl.export import export_d3rlpy
    from kalm.rl.text_encoder import TextEncoder

    data, _ = _file(tmp_path, MW)
    info = export_d3rlpy(data, tmp_path / "mw.h5", with_instruction_embedding=True)
    emb = TextEncoder.shared().encode(data.instructions)
    with (tmp_path / "mw.h5").open("rb") as f:
        buffer = ReplayBuffer.load(f, InfiniteBuffer())
    obs = buffer.episodes[1].observations
    assert obs.shape[1] == 91 + emb.shape[1] == info["obs_dim"]
    np.testing.assert_array_equal(obs[:, :91], data.observations[1, : len(obs)])
    np.testing.assert_allclose(obs[:, 91:], np.repeat(emb[1][None], len(obs), 0))
    assert info["env"] == "metaworld" and info["action_low"] == [-1.0] * 4


def test_docs_route_plain_d3rlpy_training_then_a_kalm_policy(tmp_path, monkeypatch):
    """docs/datasets.md: export with the embedding, train with plain d3rlpy
    (examples/plain_d3rlpy.py), and kalm loads the result as a trained policy."""
    import runpy
    import sys
    from pathlib import Path

    from kalm.rl.export import export_d3rlpy
    from kalm.rl.train import TrainedPolicy, policy_env

    data, _ = _file(tmp_path, MW)
    export_d3rlpy(data, tmp_path / "mw.h5", with_instruction_embedding=True)
    script = Path(__file__).resolve().parents[1] / "examples" / "plain_d3rlpy.py"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", [str(script), str(tmp_path / "mw.h5"),
                                      str(tmp_path / "policy"), "--steps", "3"])
    runpy.run_path(str(script), run_name="__main__")
    assert policy_env(tmp_path / "policy") == "metaworld"
    policy = TrainedPolicy(tmp_path / "policy")
    assert not policy.discrete and policy.obs_dim == 91
    actions = policy.act_batch(data.observations[:, 0], data.goals, data.instructions)
    assert actions.shape == (3, 4) and np.all(np.abs(actions) <= 1.0)


# ---------------------------------------------------------------------------- goal hooks
@pytest.mark.parametrize(("vector", "level", "goal"), [
    ([0, 0, 0, 1, 2, 0], None, {"kind": "relation", "object": "purple", "reference": "cyan",
                                "direction": "behind"}),
    ([2, 1, 0, 0, 0, 3], "rephrase", {"kind": "relation", "object": "blue",
                                      "reference": "red", "direction": "right"}),
    ([0, 0, 1, 0, 0, 1], None, {"kind": "push", "object": "green", "direction": "left"}),
    ([0, 0, 0, 0, 0, 2], None, {"kind": "line", "order": ["red", "blue", "green", "purple",
                                                          "cyan"]}),
    ([9, 9, 9, 9, 9, 3], "hard", {"kind": "circle", "center": "green"}),
    ([0] * 5 + [0] + [1, 2, 0, 0, 0, 0] + [0, 0, 1, 2, 0, 2] + [0] * 6, None,
     {"kind": "all", "goals": [
         {"kind": "relation", "object": "red", "reference": "blue", "direction": "behind"},
         {"kind": "relation", "object": "green", "reference": "purple", "direction": "front"}]}),
])
def test_clevr_goal_vectors(vector, level, goal):
    assert goal_from_vector(vector, level) == goal


@pytest.mark.parametrize(("vector", "level", "message"), [
    ([1, 0, 0, 0, 0, 4], None, "stay still"),
    ([0, 0, 0, 0, 0, 0], None, "--level"),
    ([1, 1, 0, 0, 0, 0], "train", "exactly one 1"),
    ([0.5, 2, 0, 0, 0, 0], None, "whole numbers"),
    ([0, 0, 0, 0, 0, 1], "hard", "needs 24 entries"),
])
def test_clevr_goal_vectors_that_are_refused(vector, level, message):
    with pytest.raises(ValueError, match=message):
        goal_from_vector(vector, level)


def test_metaworld_task_names():
    assert goal_from_task_name("reach") == {"kind": "task", "task": "reach"}
    assert goal_from_task_name("rep-door-open-v2-goal-observable") == {"kind": "task",
                                                                       "task": "door-open"}
    assert goal_from_task_name("locked-door-open")["stages"] == ["door-unlock", "door-open"]
    with pytest.raises(ValueError, match="'open-sesame'"):
        goal_from_task_name("open-sesame")


# ---------------------------------------------------------------------------- published
LENGTHS = (2, 4, 3)
T = 5


def _kalm_npy_clevr():
    """KALM's grounding/real-data dict for CLEVR: padded (N, T) arrays with masks, paraphrases
    per episode, the goal vector repeated per step."""
    rng = np.random.default_rng(1)
    n = len(LENGTHS)
    states = rng.uniform(-0.4, 0.4, (n, T + 1, 10)).astype(np.float32)
    masks = np.zeros((n, T), np.int32)
    for i, k in enumerate(LENGTHS):
        masks[i, :k] = 1
        states[i, k + 1:] = 0.0
    goals = np.array([[0, 0, 0, 1, 2, 0], [1, 2, 0, 0, 0, 1], [0, 2, 1, 0, 0, 3]], np.float32)
    terminals = np.zeros((n, T, 1), bool)
    for i, k in enumerate(LENGTHS):
        terminals[i, k - 1] = i != 2  # the third episode timed out
    return {
        "observations": states[:, :T] * masks[..., None],
        "next_observations": states[:, 1:] * masks[..., None],
        "actions": (rng.integers(0, 40, (n, T)) * masks).astype(np.int32),
        "rewards": (rng.normal(size=(n, T, 1)) * masks[..., None]).astype(np.float32),
        "terminals": terminals, "masks": masks,
        "instructions": np.array([[f"goal {i} a", f"goal {i} b"] for i in range(n)]),
        "goals": np.repeat(goals[:, None], T, axis=1),
        "observation_type": "continuous", "observation_dim": 10, "action_type": "discrete",
        "action_dim": 40, "number_of_objects": 5,
    }, states


def _save_pickled(path, fields):
    np.save(path, fields, allow_pickle=True)
    return path


def test_kalm_npy_pickled_needs_the_flag_then_maps_every_field(tmp_path):
    fields, states = _kalm_npy_clevr()
    path = _save_pickled(tmp_path / "clevr_robot.npy", fields)
    with pytest.raises(PickleRefused, match="arbitrary code"):
        import_published(path, "kalm-npy", "clevr")
    res = CliRunner().invoke(main, ["import", "--format", "kalm-npy", str(path), "--out",
                                    str(tmp_path / "x.h5")])
    assert res.exit_code == 2 and "--allow-pickle" in res.output
    assert not (tmp_path / "x.h5").exists()

    data = import_published(path, "kalm-npy", "clevr", allow_pickle=True)
    assert data.lengths.tolist() == list(LENGTHS)
    for i, k in enumerate(LENGTHS):
        np.testing.assert_array_equal(data.observations[i, : k + 1], states[i, : k + 1])
        np.testing.assert_array_equal(data.actions[i, :k], fields["actions"][i, :k])
        np.testing.assert_array_equal(data.rewards[i, :k], fields["rewards"][i, :k, 0])
        assert json.loads(data.extras["paraphrases"][i]) == [f"goal {i} a", f"goal {i} b"]
    assert data.terminals[np.arange(3), data.lengths - 1].tolist() == [True, True, False]
    assert data.instructions == ["goal 0 a", "goal 1 a", "goal 2 a"]
    assert data.goals[0] == {"kind": "relation", "object": "purple", "reference": "cyan",
                             "direction": "behind"}
    assert data.goals[2]["direction"] == "right" and data.goals[2]["object"] == "green"
    assert "final_state_missing" not in data.extras
    # the same fields in an .npz of plain arrays need no pickle
    np.savez(tmp_path / "clevr_robot.npz", **fields)
    plain = import_published(tmp_path / "clevr_robot.npz", "kalm-npy", "clevr")
    np.testing.assert_array_equal(plain.observations, data.observations)


def test_kalm_npy_metaworld_task_names_and_cli(tmp_path):
    rng = np.random.default_rng(2)
    n, t = 2, 4
    masks = np.array([[1, 1, 1, 0], [1, 1, 0, 0]], np.int32)[..., None]
    fields = {
        "observations": rng.uniform(-0.1, 0.1, (n, t, 91)) * masks,
        "next_observations": rng.uniform(-0.1, 0.1, (n, t, 91)) * masks,
        "actions": rng.uniform(-1, 1, (n, t, 4)) * masks,
        "rewards": rng.normal(size=(n, t, 1)) * masks, "masks": masks,
        "terminals": np.zeros((n, t, 1)), "goals": rng.uniform(size=(n, 3)),
        "env_names": np.array(["reach", "rep-coffee-button-v2-goal-observable"], dtype=object),
        "is_successes": np.array([[1], [0]]),
        "instructions": np.array([["Reach it."] * 3, ["Press the coffee button."] * 3]),
    }
    path = _save_pickled(tmp_path / "meta_world.npy", fields)
    out = tmp_path / "mw.h5"
    res = CliRunner().invoke(main, ["import", "--format", "kalm-npy", str(path), "--env",
                                    "metaworld", "--allow-pickle", "--out", str(out)])
    assert res.exit_code == 0, res.output
    data = read_episodes(out)
    assert data.goals == [{"kind": "task", "task": "reach"},
                          {"kind": "task", "task": "coffee-button"}]
    assert data.extras["published_success"].tolist() == [True, False]
    assert data.extras["published_task"][1] == "rep-coffee-button-v2-goal-observable"
    # KALM stores its successes as timeouts: the one flagged successful ends at a terminal
    assert data.terminals[0, 2] and not data.terminals[0, :2].any()
    assert not data.terminals[1].any()
    # s[0:3] is KALM's hand, kalm's is the tcp: moved by the measured offset, nothing else
    from kalm.envs.metaworld.constants import TCP_OFFSET

    want = fields["next_observations"][0, 2].astype(np.float32).copy()
    want[0:3] += TCP_OFFSET.astype(np.float32)
    np.testing.assert_array_equal(data.observations[0, 3], want)
    got = data.observations[1, :2, 0:3] - fields["observations"][1, :2, 0:3].astype(np.float32)
    np.testing.assert_allclose(got, np.repeat(TCP_OFFSET[None], 2, axis=0), atol=1e-6)
    np.testing.assert_array_equal(data.observations[1, :2, 3:],
                                  fields["observations"][1, :2, 3:].astype(np.float32))
    assert json.loads(data.attrs["hand_to_tcp"]) == pytest.approx(TCP_OFFSET.tolist())
    assert "KALM's" in data.attrs["rewards"]
    np.testing.assert_array_equal(data.rewards[0, :3], fields["rewards"][0, :3, 0]
                                  .astype(np.float32))
    assert data.actions.dtype == np.float32 and data.observations.dtype == np.float32


def test_kalm_npy_imagined_rollouts_with_action_masks(tmp_path):
    """KALM's generated rollouts: observations run to s_n, action_masks give the lengths."""
    fields, states = _kalm_npy_clevr()
    masks = fields.pop("masks")
    fields.pop("next_observations")
    fields.update(observations=states, action_masks=masks,
                  observation_masks=np.pad(masks, [(0, 0), (0, 1)]))
    np.savez(tmp_path / "clevr_imagined.npz", **fields)
    data = import_published(tmp_path / "clevr_imagined.npz", "kalm-npy", "clevr",
                            source="imagined")
    assert data.lengths.tolist() == list(LENGTHS) and data.source == "imagined"
    for i, k in enumerate(LENGTHS):
        np.testing.assert_array_equal(data.observations[i, : k + 1], states[i, : k + 1])


def _imaginebench_files(tmp_path, enc_dim=8):
    """ImagineBench's HDF5 (state ++ instruction encoding, (N, T, 1) masks) and a companion
    file with the instructions and goal vectors."""
    rng = np.random.default_rng(3)
    n = len(LENGTHS)
    enc = rng.normal(size=(n, enc_dim)).astype(np.float32)
    obs = np.zeros((n, T, 10 + enc_dim), np.float32)
    masks = np.zeros((n, T, 1), np.float32)
    for i, k in enumerate(LENGTHS):
        obs[i, :k, :10] = rng.uniform(-0.4, 0.4, (k, 10))
        obs[i, :k, 10:] = enc[i]
        masks[i, :k] = 1
    with h5py.File(tmp_path / "ball_imaginary_easy.h5", "w") as f:
        f["observations"] = obs
        f["actions"] = (rng.integers(0, 40, (n, T, 1)) * masks).astype(np.float32)
        f["rewards"] = masks.copy()
        f["masks"] = masks
    np.savez(tmp_path / "ball_imaginary_easy_meta.npz",
             instructions=np.array(["Push red right.", "Move blue left.", "Push cyan back."]),
             goals=np.array([[1, 0, 0, 0, 0, 3], [0, 1, 0, 0, 0, 1], [0, 0, 0, 0, 1, 0]]))
    return tmp_path / "ball_imaginary_easy.h5", tmp_path / "ball_imaginary_easy_meta.npz", obs


def test_imaginebench_h5_with_its_companion_file(tmp_path):
    path, meta, obs = _imaginebench_files(tmp_path)
    with pytest.raises(EpisodeFileError, match=r"'instructions'.*--meta"):
        import_published(path, "imaginebench", "clevr")
    data = import_published(path, "imaginebench", "clevr", meta=meta, level="easy",
                            source="imagined")
    assert data.source == "imagined" and data.lengths.tolist() == list(LENGTHS)
    assert [g["kind"] for g in data.goals] == ["push"] * 3
    assert data.goals[2] == {"kind": "push", "object": "cyan", "direction": "behind"}
    for i, k in enumerate(LENGTHS):
        np.testing.assert_array_equal(data.observations[i, :k], obs[i, :k, :10])
        # the state after the last action is not in the layout: repeated, and said so
        np.testing.assert_array_equal(data.observations[i, k], obs[i, k - 1, :10])
        np.testing.assert_array_equal(data.extras["instruction_encoding"][i], obs[i, 0, 10:])
    assert data.extras["final_state_missing"].all()
    assert data.terminals[np.arange(3), data.lengths - 1].all()
    assert data.actions.dtype == np.int64
    bare = import_published(path, "imaginebench", "clevr", require_instructions=False)
    assert bare.instructions == ["", "", ""] and bare.goals == [{}, {}, {}]


def _malformed(fields, key, value):
    out = dict(fields)
    out[key] = value
    return out


@pytest.mark.parametrize(("change", "field", "message"), [
    (lambda f: _malformed(f, "masks", np.array([[1, 0, 1, 0, 0], [1, 1, 0, 0, 0],
                                                [1, 0, 0, 0, 0]])), "masks", "run of valid"),
    (lambda f: _malformed(f, "observations", f["observations"][:, :, :8]), "observations",
     "8 values per step"),
    (lambda f: _malformed(f, "instructions", f["instructions"][:2]), "instructions",
     "2 entries for 3 episodes"),
    (lambda f: _malformed(f, "actions", np.full((3, T), 40)), "actions", "0..39"),
    (lambda f: _malformed(f, "terminals", np.ones((3, T, 1), bool)), "terminals",
     "before the last valid step"),
    (lambda f: _malformed(f, "action_dim", 16), "action_dim", "has 40"),
    (lambda f: {k: v for k, v in f.items() if k != "rewards"}, "rewards", "missing field"),
    (lambda f: _malformed(f, "goals", np.array([[1, 2, 0, 0, 0, 7]] * 3)), "goals",
     r"\[0\].*direction 7 is not one of 0-3"),
])
def test_malformed_published_files_name_the_field(tmp_path, change, field, message):
    fields, _ = _kalm_npy_clevr()
    path = _save_pickled(tmp_path / "bad.npy", change(fields))
    with pytest.raises(EpisodeFileError, match=f"'{field}'.*{message}|{message}.*'{field}'"):
        import_published(path, "kalm-npy", "clevr", allow_pickle=True)


def test_files_that_are_no_field_dict(tmp_path):
    np.save(tmp_path / "plain.npy", np.zeros((3, 4)))
    with pytest.raises(EpisodeFileError, match="not a dict of named fields"):
        import_published(tmp_path / "plain.npy", "kalm-npy", "clevr")
    (tmp_path / "x.csv").write_text("1,2\n")
    with pytest.raises(EpisodeFileError, match="unknown file type"):
        import_published(tmp_path / "x.csv", "kalm-npy", "clevr")
