"""The HDF5 episode format: round trip, atomic writes, validation errors naming the field."""

import h5py
import numpy as np
import pytest

from kalm.data.episodes import (
    EnvSpecInfo,
    Episode,
    EpisodeData,
    EpisodeFileError,
    read_episodes,
    write_episodes,
)

SPEC = EnvSpecInfo(env="clevr", obs_dim=10, action_type="discrete", action_dim=40)
GOAL = {"kind": "relation", "object": "red", "reference": "blue", "direction": "left"}


def episode(n, success=True, seed=0):
    rng = np.random.default_rng(seed)
    term = np.zeros(n, dtype=bool)
    term[-1] = success
    return Episode(
        observations=rng.uniform(-0.4, 0.4, (n + 1, 10)).astype(np.float32),
        actions=rng.integers(0, 40, n),
        rewards=rng.normal(size=n).astype(np.float32),
        terminals=term,
        instruction=f"instruction {seed} ü",
        goal=GOAL,
    )


def data():
    return EpisodeData.from_episodes([episode(3, seed=1), episode(1, seed=2),
                                      episode(5, success=False, seed=3)], SPEC)


def test_round_trip(tmp_path):
    d = data()
    path = write_episodes(d, tmp_path / "real.h5")
    back = read_episodes(path)
    assert len(back) == 3 and back.lengths.tolist() == [3, 1, 5]
    assert back.observations.shape == (3, 6, 10) and back.observations.dtype == np.float32
    assert back.actions.dtype == np.int64 and back.terminals.dtype == np.bool_
    np.testing.assert_array_equal(back.observations, d.observations)
    np.testing.assert_array_equal(back.actions, d.actions)
    assert back.instructions == d.instructions and back.goals == [GOAL] * 3
    assert back.source == "real" and back.attrs["env"] == "clevr"
    assert back.attrs["kalm_version"]
    e = back.episode(2)
    assert e.length == 5 and not e.success and e.observations.shape == (6, 10)
    assert not list(tmp_path.glob(".*tmp*"))  # no temporary file left


def test_extras_round_trip(tmp_path):
    eps = [episode(2, seed=i) for i in range(3)]
    for i, e in enumerate(eps):
        e.extras["replay_success"] = bool(i % 2)
    d = EpisodeData.from_episodes(eps, SPEC, source="imagined")
    back = read_episodes(write_episodes(d, tmp_path / "im.h5"))
    assert back.source == "imagined"
    assert back.extras["replay_success"].tolist() == [False, True, False]
    assert len(back.subset([0, 2])) == 2


def test_failed_write_leaves_old_file(tmp_path):
    path = write_episodes(data(), tmp_path / "real.h5")
    bad = data()
    bad.observations[0, 0, 0] = np.nan
    with pytest.raises(EpisodeFileError, match="observations"):
        write_episodes(bad, path)
    assert len(read_episodes(path)) == 3


def _corrupt(path, key, value):
    with h5py.File(path, "a") as f:
        del f[key]
        f[key] = value


@pytest.mark.parametrize(
    ("key", "make_value", "message"),
    [
        ("lengths", lambda d: np.array([3, 9, 5], dtype=np.int32), "'lengths'"),
        ("observations", lambda d: d.observations[:, :, :9], "'observations' has shape"),
        ("actions", lambda d: d.actions.astype(np.int32), "'actions' has dtype"),
        ("actions", lambda d: np.where(d.actions == d.actions, 41, 0), "'actions' values"),
        ("rewards", lambda d: np.full_like(d.rewards, np.nan), "'rewards' contains NaN"),
        ("terminals", lambda d: np.ones_like(d.terminals), "'terminals' set"),
    ],
)
def test_validation_names_field(tmp_path, key, make_value, message):
    d = data()
    path = write_episodes(d, tmp_path / "real.h5")
    _corrupt(path, key, make_value(d))
    with pytest.raises(EpisodeFileError) as err:
        read_episodes(path)
    assert str(path) in str(err.value) and message in str(err.value)


def test_missing_dataset_and_not_hdf5(tmp_path):
    path = write_episodes(data(), tmp_path / "real.h5")
    with h5py.File(path, "a") as f:
        del f["goals"]
    with pytest.raises(EpisodeFileError, match="missing dataset 'goals'"):
        read_episodes(path)
    junk = tmp_path / "junk.h5"
    junk.write_text("not hdf5")
    with pytest.raises(EpisodeFileError, match="not a readable HDF5"):
        read_episodes(junk)
    with pytest.raises(EpisodeFileError, match="no such episode file"):
        read_episodes(tmp_path / "absent.h5")


def test_continuous_actions(tmp_path):
    spec = EnvSpecInfo(env="toy", obs_dim=3, action_type="continuous", action_dim=2)
    e = Episode(np.zeros((3, 3), np.float32), np.ones((2, 2), np.float32),
                np.zeros(2, np.float32), np.array([False, True]), "go", {"kind": "x"})
    back = read_episodes(write_episodes(EpisodeData.from_episodes([e], spec), tmp_path / "c.h5"))
    assert back.actions.shape == (1, 2, 2) and back.spec == spec


def test_successes_round_trip_and_default_to_terminals(tmp_path):
    # success reported in info at step 1 of 3 but no termination (Meta-World style)
    e = episode(3, success=False, seed=4)
    e.successes = np.array([False, True, False])
    plain = episode(2, success=True, seed=5)  # no success signal recorded: the terminals
    assert e.success and not e.terminals.any() and plain.success
    d = EpisodeData.from_episodes([e, plain], SPEC)
    back = read_episodes(write_episodes(d, tmp_path / "s.h5"))
    assert back.successes.tolist() == [[False, True, False], [False, True, False]]
    assert [x.success for x in back.episodes()] == [True, True]
    assert back.episode(0).terminals.tolist() == [False, False, False]  # RL's terminals intact
    assert back.subset([1]).episode(0).successes.tolist() == [False, True]
    old = read_episodes(write_episodes(data(), tmp_path / "old.h5"))  # nothing recorded
    assert old.successes is None and [x.success for x in old.episodes()] == [True, True, False]
    bad = EpisodeData.from_episodes([e, plain], SPEC)
    bad.successes[1, 2] = True  # after the end of the 2-step episode
    with pytest.raises(EpisodeFileError, match="'successes' set after the end"):
        bad.validate("<x>")


@pytest.mark.parametrize(("value", "message"), [
    ("kalm-episodes-99", "newer than this kalm"),
    ("hdf5-something", "not a kalm episode format"),
])
def test_format_version_is_checked_on_read(tmp_path, value, message):
    path = write_episodes(data(), tmp_path / "real.h5")
    with h5py.File(path, "r") as f:
        assert f.attrs["format"] == "kalm-episodes-2"
    with h5py.File(path, "a") as f:
        f.attrs["format"] = value
    with pytest.raises(EpisodeFileError) as err:
        read_episodes(path)
    assert str(path) in str(err.value) and "attribute 'format'" in str(err.value)
    assert value in str(err.value) and message in str(err.value)
    with h5py.File(path, "a") as f:  # files from before the attribute existed: version 1
        del f.attrs["format"]
    assert len(read_episodes(path)) == 3
    with h5py.File(path, "a") as f:
        f.attrs["format"] = "kalm-episodes-1"
    assert len(read_episodes(path)) == 3
