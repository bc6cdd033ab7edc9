"""Goal-suite JSONL loading: every malformed line is reported with its file and line number."""

import json

import pytest

from kalm.data.suites import SuiteError, load_builtin_suite, load_suite

GOOD = {"instruction": "Put red left of blue.", "level": "rephrase",
        "goal": {"kind": "relation", "object": "red", "reference": "blue", "direction": "left"}}


def write(tmp_path, lines):
    p = tmp_path / "suite.jsonl"
    p.write_text("\n".join(lines) + "\n")
    return p


def test_good_suite_groups_paraphrases(tmp_path):
    other = {**GOOD, "instruction": "Red goes to the left of blue."}
    push = {"instruction": "Nudge green forward.", "level": "easy",
            "goal": {"kind": "push", "object": "green", "direction": "front"},
            "init": [0.1 * i for i in range(10)]}
    suite = load_suite(write(tmp_path, [json.dumps(GOOD), "", json.dumps(other),
                                        json.dumps(push)]))
    assert len(suite) == 3 and suite.levels == ["easy", "rephrase"]
    assert len(suite.goals) == 2
    assert suite.paraphrases(GOOD["goal"]) == [GOOD["instruction"], other["instruction"]]
    assert suite.by_level("easy").entries[0].init[3] == pytest.approx(0.3)


BAD = [
    ('{"instruction": "x", "goal": ', "bad JSON"),
    (json.dumps({**GOOD, "goal": {**GOOD["goal"], "object": "pink"}}), "unknown colour 'pink'"),
    (json.dumps({**GOOD, "goal": {**GOOD["goal"], "direction": "up"}}), "unknown direction"),
    (json.dumps({"instruction": "x"}), "missing key(s) 'goal'"),
    (json.dumps({**GOOD, "goal": {**GOOD["goal"], "reference": "red", "object": "red"}}),
     "object == reference"),
    (json.dumps({**GOOD, "init": [0.0] * 9}), "'init' must be a list of 10 numbers, got 9"),
    (json.dumps({**GOOD, "init": [0.0] * 9 + ["a"]}), "'init'[9] must be a finite number"),
    (json.dumps({**GOOD, "colour": "red"}), "unknown key(s) 'colour'"),
    (json.dumps([1, 2]), "expected a JSON object"),
]


@pytest.mark.parametrize(("line", "message"), BAD)
def test_bad_line_names_file_and_line(tmp_path, line, message):
    path = write(tmp_path, [json.dumps(GOOD), line])
    with pytest.raises(SuiteError) as err:
        load_suite(path)
    assert f"{path}:2:" in str(err.value)
    assert message in str(err.value)


def test_empty_and_missing(tmp_path):
    with pytest.raises(SuiteError, match="empty"):
        load_suite(write(tmp_path, [""]))
    with pytest.raises(SuiteError, match="no such suite"):
        load_suite(tmp_path / "nope.jsonl")
    with pytest.raises(SuiteError, match="unknown built-in suite"):
        load_builtin_suite("medium")
