"""benchmarks/architectures.py: its quick mode on two tiny codecs measures each row as attack.py and the
RD benchmark do, and its per-image BD follows each image's own curve."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from rnic import rd
from rnic.codecs import build_codec
from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import architectures  # noqa: E402  (a script beside the tests' package, as benchmarks import each other)


def test_per_image_bd_follows_each_images_own_curve():
    # Two images, three rate points: the learned curve of image 0 lies 1 dB above JPEG's at the same
    # rates, image 1's 3 dB above; the mean curves would give one figure for both.
    rates = [0.2, 0.4, 0.8]
    points = [
        {
            "jpeg": {"bpp": [r, r], "psnr": [20 + 20 * r, 30 + 20 * r]},
            "learned": {"bpp": [r, r], "psnr": [21 + 20 * r, 33 + 20 * r]},
        }
        for r in rates
    ]
    found = architectures.per_image_bd(points, "jpeg")
    assert found["bd_psnr"]["per_image"] == pytest.approx([1.0, 3.0])
    assert found["bd_psnr"]["spread"]["median"] == pytest.approx(2.0)
    assert all(rate < 0 for rate in found["bd_rate"]["per_image"])  # better: less rate at equal PSNR


def test_a_figure_the_curves_do_not_allow_reads_n_a_without_its_unit():
    # BD-rate is None where the two curves share no PSNR range (a learned codec far above JPEG)
    assert architectures.number(None, "+.1f", "%") == "n/a"
    assert architectures.number(-31.25, "+.1f", "%") == "-31.2%"


def test_the_finetuning_table_names_each_evaluations_threat_and_photos():
    # The label comes from what each evaluation recorded (its threat, split and photos), not from its
    # folder's name: a val and a test evaluation, and one whose run and control share no photo (no gain).
    figures = {"psnr_adv": 25.0, "psnr_clean": 28.0, "bpp_clean": 0.42, "vi": None}

    def evaluation(threat, split, eps, gains):
        return {
            "threat": threat, "split": split, "photos": len(gains) or 4, "eps": eps, "mean": figures,
            "control_mean": figures, "gain_psnr_adv": rd.spread(gains),
        }  # fmt: skip

    threats = {
        "linf_test": evaluation("linf", "test", 8 / 255, [0.5, 1.0, 0.7, 0.9, 1.2, 0.3, 0.8, 1.1]),
        "linf": evaluation("linf", "val", 8 / 255, [0.2, 0.4, 0.6, 0.8]),
        "start_mse": evaluation("mse", "val", 1e-4, []),
    }
    lines = architectures.finetuning_table({"hyperprior_cpu": threats})[2:]
    labels = [line.split(" | ")[1] for line in lines]
    assert labels == ["L-inf 8/255, val (4)", "L-inf 8/255, test (8)", "MSE 0.0001, val (4)"]
    assert lines[0].split(" | ")[3] == "0.50 (0.50, 0.26)" and " n/a / n/a " in lines[0]
    assert lines[2].split(" | ")[3] == "n/a"


def test_quick_mode_measures_two_tiny_codecs(tmp_path, monkeypatch):
    torch.manual_seed(0)
    rows = {}
    for name, arch in (("hyperprior", "bmshj2018_hyperprior"), ("factorized", "bmshj2018_factorized")):
        weights = tmp_path / f"{name}.pth"
        torch.save(build_codec(arch, N=16, M=24).state_dict(), weights)  # untrained
        rows[name] = f"model={arch} model.N=16 model.M=24 model.weights={weights}"
    out = tmp_path / "out"
    argv = ["architectures.py", "--rows", *(f"--row={name}={template}" for name, template in rows.items())]
    argv += ["--qualities", "1", "2", "--attack-quality", "2", "--images", "1", "--crop", "64"]
    monkeypatch.setattr(sys, "argv", [*argv, "--scale", "0.01", "--out", str(out)])
    architectures.main()
    measured = json.loads((out / "architectures.json").read_text())["rows"]
    table = (out / "architectures.md").read_text()
    assert list(measured) == list(rows)
    for name, row in measured.items():
        arch = rows[name].split()[0].removeprefix("model=")
        assert row["parameters"] == sum(p.numel() for p in build_codec(arch, N=16, M=24).parameters())
        assert row["encode_s"]["n"] == row["decode_s"]["n"] == 1 and row["encode_s"]["mean"] > 0
        assert [p["quality"] for p in row["clean"]["points"]] == [1, 2]
        clean_psnr = row["clean"]["points"][1]["learned"]["psnr"]
        # six worst cases (three budgets, two selects), each attack.py's run on the attacked rate point's
        # weights: its clean figures are the RD benchmark's real bitstreams of the same photo
        assert len(row["worst_case"]) == 6
        for case in row["worst_case"].values():
            results = json.loads(Path(case["results"]).read_text())
            assert (
                results["key"]["attack"]["select"] == case["select"] and results["key"]["eps"] == case["eps"]
            )
            assert case["per_image"]["psnr_clean"] == pytest.approx(clean_psnr, abs=1e-4)
            assert case["drop"]["mean"] == pytest.approx(
                case["per_image"]["psnr_clean"][0] - case["per_image"]["psnr_adv"][0]
            )
        recipe = row["against_recipe"]
        assert recipe["time_ratio"] == pytest.approx(
            recipe["auto"]["seconds"] / recipe["paper recipe"]["seconds"]
        )
        assert sum(line.startswith(f"| {name} |") for line in table.splitlines()) == 2  # both tables
    assert "n/a%" not in table
    # A rerun reads back each row measured under the same settings (here: a figure altered in its file
    # survives), and measures again a row whose settings changed.
    stored = {name: out / "rows" / f"{name}.json" for name in rows}
    for name, path in stored.items():
        row = json.loads(path.read_text())
        row["parameters"] = -1
        if name == "factorized":
            row["settings"]["scale"] = 0.5
        path.write_text(json.dumps(row))
    architectures.main()
    measured = json.loads((out / "architectures.json").read_text())["rows"]
    assert measured["hyperprior"]["parameters"] == -1 and measured["factorized"]["parameters"] > 0


def test_every_shipped_row_builds_its_shipped_codec_at_each_rate_point(tmp_path):
    # Each row of the study is attack.py's overrides of a shipped codec: at every rate point they load
    # that point's shipped weights (a variable-rate codec's rate, not a quality of its own).
    from rnic.codecs import SHIPPED, qualities
    from rnic.io import equal_states

    arches = {"hyperprior_cpu": "bmshj2018_hyperprior_cpu"}
    assert {arches.get(name, name) for name in architectures.ROWS} == set(SHIPPED)
    for name, template in architectures.ROWS.items():
        arch = arches.get(name, name)
        for quality in qualities(arch):
            codec = architectures.build_row_codec(template, quality, 256, tmp_path / name)
            shipped = build_codec(arch, quality=quality, pretrained=True)
            assert equal_states(codec.state_dict(), shipped.state_dict()), (name, quality)
            assert getattr(codec, "rate", quality) == quality, name


def test_coding_speed_times_the_shipped_codecs_side_by_side(monkeypatch, capsys):
    import coding_speed

    arches = ["mbt2018_mean_cpu", "mbt2018_mean_vbr_cpu"]
    argv = ["coding_speed.py", "--arch", *arches, "--rounds", "1", "--images", "2", "--crop", "64"]
    monkeypatch.setattr(sys, "argv", argv)
    coding_speed.main()
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.split()[0] in arches]
    assert [row[0] for row in rows] == arches
    assert rows[0][2] == rows[0][4] == "1.00"  # the first codec is the unit
    assert all(float(row[1]) > 0 and float(row[3]) > 0 for row in rows)
