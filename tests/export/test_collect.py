"""`python -m export collect`: what a device kept becomes an MVTec-layout folder that trains."""

from __future__ import annotations

import json

import cv2
import pytest

from edge_runtime.service.kept_parts import KeepLimits, KeptParts
from export.__main__ import main as export_main
from train_host.__main__ import main as train_main
from train_host.run_store import load_run

GOODS = 8  # train_host keeps a quarter of them (holdout_fraction) for calibration


@pytest.fixture
def device_state(tiny_dataset, tmp_path):
    """A state directory as a device leaves it: parts marked good, one marked good then undone, a defect the
    operator confirmed, one the device flagged, one near the threshold and one whose marking was refused."""
    state = tmp_path / "state"
    store = KeptParts(state / "kept_parts", KeepLimits(100, 10**9, 3600))
    goods = sorted((tiny_dataset / "train" / "good").iterdir())
    defects = sorted((tiny_dataset / "test" / "crack").iterdir())

    def frame(path):  # noqa: ANN001, ANN202
        return cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)

    def feedback(label: str, outcome: str, number: int) -> dict:
        return {"feedback_id": f"fb-{number}", "label": label, "outcome": outcome}

    for number, path in enumerate(goods[:GOODS]):
        store.add_feedback(f"good-{number}", frame(path), {"score": 0.6}, feedback("good", "learned", number))
    store.add_feedback("undone", frame(goods[GOODS]), {"score": 0.6}, feedback("good", "learned", 90))
    store.mark_undone("undone", "fb-90")
    store.add_feedback("confirmed", frame(defects[0]), {"score": 0.9}, feedback("defect", "recorded", 91))
    store.add_feedback("refused", frame(defects[1]), {"score": 2.9}, feedback("good", "refused", 92))
    store.keep("flagged", frame(defects[2]), ["defect"], {"score": 0.8, "verdict": "defect"})
    store.keep("near", frame(goods[GOODS + 1]), ["uncertain"], {"score": 0.5, "verdict": "good"})
    store.flush()
    store.close()
    return state


def test_collect_sorts_kept_parts_and_the_folder_trains(device_state, tiny_training_yaml, tmp_path, capsys):
    out = tmp_path / "collected"
    assert export_main(["collect", "--from", str(device_state), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"collected {GOODS + 5} part(s)" in printed

    def names(folder: str) -> list[str]:
        return sorted(p.stem for p in (out / folder).glob("*.png"))

    assert names("train/good") == sorted(f"good-{n}" for n in range(GOODS))
    assert names("review/undone") == ["undone"] and names("review/marked_defect") == ["confirmed"]
    assert names("review/refused_good") == ["refused"] and names("review/defect") == ["flagged"]
    assert names("review/uncertain") == ["near"]
    index = json.loads((out / "collect.json").read_text())
    assert {entry["part_id"]: entry["destination"] for entry in index}["confirmed"] == "review/marked_defect"

    again = export_main(["collect", "--from", str(device_state / "kept_parts"), "--out", str(out)])
    assert again == 0 and f"{GOODS + 5} part(s) were already in" in capsys.readouterr().out

    run = tmp_path / "run"
    fast = ["autoencoder.iterations=2", "unet.iterations=2", "adaptation.iterations=1", "memory.coreset_size=50"]
    argv = ["train", "--config", str(tiny_training_yaml), "--out", str(run), "--set", f"data.root={out}"]
    argv += [arg for key in fast for arg in ("--set", key)] + ["--no-evaluate"]
    assert train_main(argv) == 0
    trained = load_run(run)
    assert trained.memory.index.get_current_count() > 0
    split = json.loads((run / "split.json").read_text())
    assert len(split["fit"]) + len(split["holdout"]) == GOODS


def test_collect_names_a_source_without_kept_parts(tmp_path, capsys):
    assert export_main(["collect", "--from", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    assert "neither a device state directory with kept_parts/" in capsys.readouterr().err
