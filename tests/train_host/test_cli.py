import json
from pathlib import Path

from train_host.__main__ import main
from train_host.ablation import ABLATIONS, ablation_table, command_for


def test_bad_config_refuses_to_start_and_names_the_key(tmp_path, capsys):
    config = tmp_path / "site.yaml"
    config.write_text("data:\n  root: somewhere\n  colour: gray\n")
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "run")]) == 2
    error = capsys.readouterr().err
    assert "site.yaml" in error and "data.colour" in error and "Extra inputs are not permitted" in error
    assert not (tmp_path / "run").exists()


def test_missing_dataset_is_a_clear_error(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text(f"data:\n  root: {tmp_path / 'nowhere'}\n  image_size: [32, 32]\n")
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "run")]) == 2
    assert "training folder not found" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_train_and_evaluate_a_set_labelled_per_image(tiny_dataset, tiny_training_yaml, without_masks, tmp_path, capsys):
    root = without_masks(tiny_dataset, tmp_path / "site")
    run = tmp_path / "run"
    argv = ["train", "--config", str(tiny_training_yaml), "--out", str(run), "--set", f"data.root={root}"]
    assert main(argv) == 0
    table = capsys.readouterr().out
    assert "| **all** | 6 | 3 |" in table and "n/a" in table
    saved = json.loads((run / "eval" / "default" / "metrics.json").read_text())
    assert saved["overall"]["aupro"] is None and 0.0 <= saved["overall"]["image_auroc"] <= 1.0
    assert "No pixel masks in this set" in (run / "eval" / "default" / "report.md").read_text()


def test_evaluate_needs_a_finished_run(tmp_path, capsys):
    assert main(["evaluate", "--run", str(tmp_path)]) == 2
    assert "not a training run" in capsys.readouterr().err


def test_ablation_rows_cover_the_method_and_name_their_commands():
    tags = [a.tag for a in ABLATIONS]
    assert tags[0] == "full" and {"fixed_noise", "added_noise", "adaptation", "knn_only"} <= set(tags)
    assert command_for(Path("runs/x"), ABLATIONS[1]) == (
        "python -m train_host evaluate --run runs/x --tag fixed_noise --set inspection.dynamic_noise=false"
    )
    assert ablation_table(Path("runs/x"), []).count("\n") == 1
