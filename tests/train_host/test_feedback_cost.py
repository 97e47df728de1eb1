"""The feedback-cost measurement on the tiny bundle: flagged goods are taught through the service's feedback desk and
the test images scored again."""

import json
import shutil

from train_host.__main__ import main
from train_host.feedback_cost import measure_feedback_cost


def _with_defects_filed_as_good(tiny_dataset, target):
    """The tiny set with its defect images also filed under test/good: goods the bundle surely flags."""
    shutil.copytree(tiny_dataset, target)
    for defect in ("blowhole", "crack"):
        for image in (tiny_dataset / "test" / defect).iterdir():
            shutil.copy(image, target / "test" / "good" / f"{defect}-{image.name}")
    return target


def test_taught_false_alarms_pass_and_the_counts_add_up(bundle, keys, tiny_dataset, tmp_path, capsys):
    data = _with_defects_filed_as_good(tiny_dataset, tmp_path / "set")
    goods = len(list((data / "test" / "good").iterdir()))
    defects = sum(len(list((data / "test" / d).iterdir())) for d in ("blowhole", "crack"))
    cost = measure_feedback_cost(bundle[0], [keys[1]], data)

    assert cost.taught, "the defects filed as good should raise false alarms"
    assert all(name.startswith("good/") for name in cost.taught)
    assert all(score < cost.threshold for score in cost.taught_scores_after), "each taught part passes now"
    assert cost.vectors_added > 0
    assert (cost.defects, cost.untaught_goods + len(cost.taught)) == (defects, goods)
    assert cost.false_alarms_before == 0, "every flagged good was taught, so none is left flagged before"
    assert cost.found_before - len(cost.no_longer_found) <= cost.found_after <= cost.defects

    out = tmp_path / "cost.json"
    argv = ["feedback-cost", "--bundle", str(bundle[0]), "--trusted-key", str(keys[1]), "--data", str(data)]
    assert main([*argv, "--out", str(out)]) == 0
    assert json.loads(out.read_text())["taught"] == cost.taught
    assert "defects found" in capsys.readouterr().out
