"""W&B dashboards, offline: what attack.py and train.py write into a run, read back from the run's own record
log (the `.wandb` file that `wandb sync` uploads) and its files, never mocked."""

import json
import struct
import time
from pathlib import Path

import pytest
from wandb.proto import wandb_internal_pb2

from rnic.dashboard import TABLE_COLUMNS, run_names
from rnic.evaluation import evaluate_robustness
from rnic.training import train
from tests.conftest import attack_cfg, compose_config

BLOCK, HEADER = 32768, 7  # the record log's block size and record header (checksum, length, type)


def read_records(path: Path) -> list:
    """The protobuf records of a W&B record log (a LevelDB-style log: records split over 32 KiB blocks)."""
    data = path.read_bytes()
    assert data[:4] == b":W&B", "not a W&B record log"
    records, offset, pending = [], 7, b""
    while offset + HEADER <= len(data):
        left = BLOCK - offset % BLOCK
        if left < HEADER:  # a block's tail too short for a header is padding
            offset += left
            continue
        _, length, kind = struct.unpack("<IHB", data[offset : offset + HEADER])
        if kind == 0:
            break
        chunk = data[offset + HEADER : offset + HEADER + length]
        offset += HEADER + length
        pending = chunk if kind in (1, 2) else pending + chunk  # full / first, else middle / last
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


def offline_run(folder: Path) -> tuple[Path, dict]:
    """The single offline run under `folder`: its directory and what its records hold."""
    (run,) = (folder / "wandb").glob("offline-run-*")
    (log,) = run.glob("*.wandb")
    for _ in range(60):  # W&B's service may still be writing the log when the run has finished
        records = read_records(log)
        if any(record.WhichOneof("record_type") == "exit" for record in records):
            break
        time.sleep(0.5)
    found = {"summary": {}, "history": {}, "artifacts": [], "run": None}
    for record in records:
        kind = record.WhichOneof("record_type")
        if kind == "run":
            found["run"] = record.run
        elif kind == "summary":
            for item in record.summary.update:
                found["summary"][item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
        elif kind == "history":
            for item in record.history.item:
                found["history"][item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
        elif kind == "artifact":
            found["artifacts"].append(record.artifact)
    return run, found


def test_an_attack_run_logs_its_table_panels_means_and_card(tmp_path, trained_checkpoint):
    cfg = attack_cfg(tmp_path, trained_checkpoint, "logger=wandb", steps=2)
    evaluate_robustness(cfg)
    results = json.loads((tmp_path / "results.json").read_text())
    run, found = offline_run(tmp_path)
    name = found["run"].display_name  # the entry point and the overrides (Hydra's job.override_dirname)
    assert name.startswith("attack/") and "attack=linf" in name and found["run"].project == "rnic"

    (table_file,) = (run / "files" / "media" / "table").glob("images_*.table.json")
    table = json.loads(table_file.read_text())
    assert table["columns"] == ["image", *TABLE_COLUMNS]
    assert [row[0] for row in table["data"]] == [r["image"] for r in results["images"]]
    first = dict(zip(table["columns"], table["data"][0], strict=True))
    for key in (
        "psnr_clean",
        "psnr_adv",
        "msssim_adv",
        "bpp_clean",
        "bpp_adv",
        "vi",
        "psnr_jpeg",
        "bpp_webp",
    ):
        assert first[key] == pytest.approx(results["images"][0][key]) and isinstance(first[key], float)

    panels = sorted((run / "files" / "media" / "images").glob("panels_*.png"))
    assert len(panels) == len(results["images"]) == 2
    assert found["history"]["panels/count"] == 2
    assert found["history"]["panels/captions"] == [r["image"] for r in results["images"]]

    for key in ("psnr_clean", "psnr_adv", "bpp_clean", "bpp_adv", "vi", "psnr_jpeg"):
        assert found["summary"][f"mean/{key}"] == pytest.approx(results["mean"][key])

    (card,) = [a for a in found["artifacts"] if a.type == "model-card"]
    assert [entry.path for entry in card.manifest.contents] == ["card.json"]


def test_attack_py_takes_wandb_only(tmp_path, trained_checkpoint):
    cfg = attack_cfg(tmp_path, trained_checkpoint, "logger=csv")
    with pytest.raises(ValueError, match="logger=csv: attack.py logs to W&B only"):
        evaluate_robustness(cfg)


def test_training_logs_attacked_validation_images_beside_clean_ones(tiny_cfg, tmp_path):
    train(tiny_cfg("logger=wandb", "attack=linf", "attack.steps=1", "data.max_val_images=2"))
    run, found = offline_run(tmp_path)
    images = found["history"]
    assert images["val/reconstructions/count"] == 2
    # Each image: source | reconstruction | adversarial | its reconstruction (192 px each).
    assert images["val/reconstructions/width"] == 4 * 192
    assert "adversarial" in images["val/reconstructions/captions"][0]
    assert len(list((run / "files" / "media" / "images" / "val").glob("reconstructions_*.png"))) >= 2


def test_runs_are_named_after_the_experiment_and_the_swept_keys(tmp_path):
    sweep = f"hydra.sweep.dir={tmp_path}/2026-01-01_00-00-00_000000"
    # Hydra's job.override_dirname: the command line's keys (hydra.* left out), sorted.
    cfg = compose_config(
        tmp_path, "model.quality=3", "experiment=smoke", "hydra.mode=MULTIRUN", sweep, keep_hydra=True
    )
    assert run_names(cfg) == ("smoke/model.quality=3", "smoke/2026-01-01_00-00-00_000000")
    cfg = compose_config(tmp_path, "attack=l2", "attack.steps=3", keep_hydra=True)
    assert run_names(cfg) == ("train/attack.steps=3,attack=l2", None)  # a single run has no group
