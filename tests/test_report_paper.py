"""report.py's paper-ready output: every table and figure per image set, LaTeX tables and PDF figures,
mean +- std over seeds, and readable ticks."""

import csv
import json
from pathlib import Path

import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg

from rnic.image_sets import image_set, set_label
from rnic.report import build_report
from rnic.report.attacks import rate_distortion_figure
from rnic.report.methods import gain_figure

SAMPLE = {"source": {"_target_": "rnic.data.SampleImages"}, "val_crop": 256}
KODAK = {"source": {"_target_": "rnic.data.ImageFolder", "root": "/data/kodak"}, "val_crop": None}


def attack_run(folder: Path, data: dict, names: list[str], psnr_adv: float, seed: int = 0, quality: int = 2):
    """An attack.py run folder as report.py reads it (config.yaml and results.json), written as a run
    from before image sets were recorded (the report derives its image set from the records)."""
    folder.mkdir(parents=True)
    config = {"model": {"codec": {"arch": "bmshj2018_hyperprior_cpu"}, "quality": quality, "metric": "mse",
                        "pretrained": True},
              "attack": {"_target_": "rnic.attacks.AutoAttack", "eps": 0.0157}, "data": data, "split": "val",
              "seed": seed, "paths": {"output_dir": str(folder)}}  # fmt: skip
    (folder / "config.yaml").write_text(json.dumps(config))
    mean = {"psnr_in": 36.0, "psnr_clean": 28.0 + quality, "psnr_adv": psnr_adv, "bpp_clean": 0.2 * quality,
            "bpp_adv": 0.21 * quality, "vi": 3.0, "psnr_jpeg": 25.0, "bpp_jpeg": 0.2 * quality}  # fmt: skip
    records = [{"image": name, **mean} for name in names]
    (folder / "results.json").write_text(json.dumps({"images": records, "mean": mean, "complete": True}))


def read(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_two_image_sets_are_never_pooled(tmp_path):
    runs = tmp_path / "runs"
    for quality in (1, 2):
        attack_run(
            runs / f"sample_q{quality}", SAMPLE, ["astronaut", "coffee"], 21.0 + quality, quality=quality
        )
        attack_run(runs / f"kodak_q{quality}", KODAK, ["kodim01", "kodim02", "kodim03"], 24.0 + quality,
                   quality=quality)  # fmt: skip
    found = build_report([runs], tmp_path / "report")
    sample = set_label(image_set(SAMPLE, "val", ["astronaut", "coffee"]))
    kodak = set_label(image_set(KODAK, "val", ["kodim01", "kodim02", "kodim03"]))
    assert sample.startswith("sample/val #") and kodak.startswith("kodak/val #") and kodak.endswith("(3)")
    assert {r["image_set"] for r in read(tmp_path / "report" / "attacks.csv")} == {sample, kodak}
    summary = {(r["image_set"], r["quality"]): float(r["worst_psnr_adv"])
               for r in read(tmp_path / "report" / "summary.csv")}  # fmt: skip
    assert summary == {(sample, "1"): 22.0, (sample, "2"): 23.0, (kodak, "1"): 25.0, (kodak, "2"): 26.0}

    figure = rate_distortion_figure(found["attacks"])
    panels = {axis.get_title(): axis for axis in figure.axes}
    assert set(panels) == {f"clean vs attacked, {sample}", f"clean vs attacked, {kodak}"}
    for name, low, high in ((sample, 22.0, 23.0), (kodak, 25.0, 26.0)):
        attacked = [
            line for line in panels[f"clean vs attacked, {name}"].get_lines() if line.get_marker() == "o"
        ]
        assert [list(line.get_ydata()) for line in attacked] == [[low, high]]  # this set's points only
    texts = [t.get_text() for t in figure.legends[0].get_texts()]
    assert texts == ["bmshj2018_hyperprior_cpu metric=mse weights=pretrained AutoAttack eps=0.0157",
                     "clean", "attacked", "JPEG at the clean rate", "WebP at the clean rate"]  # fmt: skip


def test_tables_are_written_as_latex_and_figures_as_pdf(tmp_path):
    attack_run(tmp_path / "runs" / "a", SAMPLE, ["astronaut", "coffee"], 22.5)
    build_report([tmp_path / "runs"], tmp_path / "report")
    out = tmp_path / "report"
    for stem in ("attacks", "summary"):
        tex = (out / f"{stem}.tex").read_text()
        assert tex.startswith(r"\begin{tabular}") and r"\toprule" in tex and r"\bottomrule" in tex
        assert tex.count(r"\midrule") == 1 and "sample/val \\#" in tex  # '#' escaped for LaTeX
        assert tex.count(r" \\") == len(read(out / f"{stem}.csv")) + 1  # header and one line per row
    for stem in ("rate_distortion", "robustness_curves"):
        assert (out / f"{stem}.pdf").read_bytes().startswith(b"%PDF")
        from PIL import Image

        with Image.open(out / f"{stem}.png") as image:
            assert round(image.info["dpi"][0]) >= 150


def test_runs_that_differ_only_in_seed_are_aggregated(tmp_path):
    runs = tmp_path / "runs"
    for seed, psnr in ((0, 22.0), (1, 23.0), (2, 24.5)):
        attack_run(runs / f"seed{seed}", SAMPLE, ["astronaut", "coffee"], psnr, seed=seed)
    attack_run(runs / "other_quality", SAMPLE, ["astronaut", "coffee"], 30.0, seed=0, quality=3)
    attack_run(runs / "other_images", KODAK, ["kodim01"], 31.0, seed=1)
    build_report([runs], tmp_path / "report")
    (row,) = read(tmp_path / "report" / "seeds.csv")  # the other two runs have no repetition
    assert (row["n"], row["seeds"], row["quality"]) == ("3", "0,1,2", "2")
    assert float(row["psnr_adv_mean"]) == pytest.approx(23.1666667)
    assert float(row["psnr_adv_std"]) == pytest.approx(1.2583057)  # sample std (n - 1)
    assert float(row["psnr_clean_std"]) == 0.0
    page = (tmp_path / "report" / "report.html").read_text()
    assert "23.2 ± 1.26" in page


def tick_labels_overlap(axis) -> bool:
    canvas = FigureCanvasAgg(axis.figure)
    canvas.draw()
    renderer = canvas.get_renderer()
    boxes = [t.get_window_extent(renderer) for t in axis.get_xticklabels() if t.get_text()]
    return any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1 :])


def test_the_robust_gain_axis_has_few_distinct_readable_ticks():
    # Every method at the same compute (400 passes): the axis must not crowd '400.00400.25400.50...'.
    gains = {"none": 0.0, "mix": 0.8, "fast": 0.5}
    rows = [{"method": m, "passes": 400.0, "vi_linf_gain": g} for m, g in gains.items()]
    figures = {"bpp_adv": 0.4, "psnr_adv": 24.0, "bpp_clean": 0.42, "psnr_clean": 28.0, "psnr_jpeg": None}
    runs = [{"method": m, "robust_eval": {"linf": figures}, "lmbda": 0.0067} for m in gains]
    figure = gain_figure(rows, runs)
    axis = figure.axes[0]
    FigureCanvasAgg(figure).draw()
    labels = [t.get_text() for t in axis.get_xticklabels() if t.get_text()]
    assert 2 <= len(labels) <= 6 and len(set(labels)) == len(labels), labels
    assert "400" in labels and all("." not in text for text in labels), labels
    assert not tick_labels_overlap(axis)


def test_the_finetuning_figure_names_each_runs_image_set():
    from rnic.report.training import finetuning_figure

    rows = [
        {"run": f"runs/{name}", "attack": "linf", "image_set": label, "start_clean_psnr": 28.0,
         "final_clean_psnr": 27.9}
        for name, label in (("a", "sample/val #1a2b (4)"), ("b", "folder/val #3c4d (8)"))
    ]  # fmt: skip
    figure = finetuning_figure(rows)
    ticks = [tick.get_text() for tick in figure.axes[0].get_xticklabels()]
    assert [t.splitlines()[-1] for t in ticks] == ["sample/val #1a2b (4)", "folder/val #3c4d (8)"]
