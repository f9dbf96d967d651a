"""Studies: real Hydra multiruns (basic and submitit_local launchers), the report built from them."""

import csv
import json
import re
import subprocess
import sys
from html.parser import HTMLParser

import pytest

from tests.conftest import ROOT, TINY, compose_config, tiny_widths

ATTACK = ["model=bmshj2018_hyperprior", "model.N=32", "model.M=48", "data.val_crop=192", "max_images=1",
          "attack=linf", "attack.steps=2"]  # fmt: skip


def run(*args, timeout=600):
    result = subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_a_training_sweep_reports_its_failed_job_and_keeps_the_others(tmp_path):
    sweep = tmp_path / "sweep"
    run("train.py", "-m", *TINY, *tiny_widths([]), "model.quality=3,9", f"hydra.sweep.dir={sweep}")
    assert (sweep / "0" / "final_metrics.json").is_file()
    assert "model.quality=9 is out of range" in (sweep / "1" / "error.txt").read_text()

    report = tmp_path / "report"
    out = run("report.py", str(sweep), "--out", str(report)).stdout
    assert "1 training run(s), 1 failed job(s)" in out
    (row,) = read_csv(report / "training.csv")
    final = json.loads((sweep / "0" / "final_metrics.json").read_text())
    assert float(row["final_clean_psnr"]) == pytest.approx(final["val/clean/psnr"])
    assert float(row["start_clean_psnr"]) == pytest.approx(final["start"]["val/clean/psnr"])
    assert row["quality"] == "3" and row["codec"] == "bmshj2018_hyperprior_cpu"
    assert "sweep/1" in (report / "report.md").read_text()
    page = (report / "report.html").read_text()
    # the finetuning figure and the PSNR-against-passes curves
    assert page.count("data:image/png;base64,") == 2 and "Failed jobs" in page


def test_a_failed_job_does_not_leak_its_wandb_run_into_the_next(tmp_path):
    sweep = tmp_path / "sweep"
    # Job 0 overflows at its first step, after its W&B run has started; job 1 trains normally.
    run("train.py", "-m", *TINY, *tiny_widths([]), "logger=wandb", "module.optimizer.lr=1e30,1e-4",
        f"hydra.sweep.dir={sweep}")  # fmt: skip
    assert "is not finite" in (sweep / "0" / "error.txt").read_text()
    runs = {job: list((sweep / job / "wandb").glob("offline-run-*")) for job in ("0", "1")}
    assert len(runs["0"]) == 1 and len(runs["1"]) == 1, runs
    assert runs["0"][0].name.split("-")[-1] != runs["1"][0].name.split("-")[-1]  # two run ids
    (record_log,) = runs["1"][0].glob("*.wandb")
    assert b"val/clean/bpp_real" in record_log.read_bytes()  # job 1's metrics are in job 1's run


def test_an_attack_sweep_and_its_report(tmp_path, trained_checkpoint):
    sweep = tmp_path / "sweep"
    run("attack.py", "-m", *ATTACK, f"model.weights={trained_checkpoint}", "attack.eps=0.004,0.0157",
        f"hydra.sweep.dir={sweep}")  # fmt: skip
    report = tmp_path / "report"
    run("report.py", str(sweep), "--out", str(report))
    rows = {float(r["eps"]): r for r in read_csv(report / "attacks.csv")}
    for job in ("0", "1"):
        results = json.loads((sweep / job / "results.json").read_text())
        eps = json.loads(
            json.dumps(
                float(
                    sweep.joinpath(job, ".hydra", "overrides.yaml")
                    .read_text()
                    .split("attack.eps=")[1]
                    .split()[0]
                )
            )
        )
        row = rows[eps]
        for key in ("psnr_adv", "psnr_clean", "bpp_adv", "vi"):
            assert float(row[key]) == pytest.approx(results["mean"][key], rel=1e-9)
    page = (report / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 2  # robustness curves, rate-distortion
    assert (report / "robustness_curves.png").stat().st_size > 10_000
    check_readable_page(page)


class PageReader(HTMLParser):
    """The headings, tables (their box and cells) and images of report.html, as a browser lays them out."""

    def __init__(self):
        super().__init__()
        self.headings, self.tables, self.cells, self.stack, self.text = [], [], [], [], None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append([dict(a).get("class") for t, a in self.stack if t == "div"])
        if tag in ("h2", "td", "th"):
            self.text = ""
        self.stack.append((tag, attrs))

    def handle_endtag(self, tag):
        self.stack.pop()
        if tag == "h2":
            self.headings.append(self.text)
        elif tag in ("td", "th"):
            self.cells.append((tag, self.text))
        if tag in ("h2", "td", "th"):
            self.text = None

    def handle_data(self, data):
        if self.text is not None:
            self.text += data


def check_readable_page(page: str) -> None:
    reader = PageReader()
    reader.feed(page)
    assert reader.headings[0].startswith("Summary")  # what a reader looks for first
    assert reader.tables and all("scroll" in boxes for boxes in reader.tables)  # wide tables scroll in a box
    assert not any(h.endswith(".png") for h in reader.headings)  # figures titled by what they show
    headers = {text for tag, text in reader.cells if tag == "th"}
    assert {"clean PSNR [dB]", "attacked PSNR [dB]", "VI [dB]"} <= headers
    numbers = [text for tag, text in reader.cells if tag == "td" and re.fullmatch(r"-?[0-9.]+", text)]
    assert numbers and all(len(n.lstrip("-").replace(".", "").lstrip("0")) <= 4 for n in numbers), numbers


@pytest.mark.slow
def test_a_submitit_local_sweep(tmp_path, trained_checkpoint):
    sweep = tmp_path / "sweep"
    run("attack.py", "-m", "hydra/launcher=submitit_local", *ATTACK, f"model.weights={trained_checkpoint}",
        "attack.eps=0.004,0.0157", f"hydra.sweep.dir={sweep}")  # fmt: skip
    for job in ("0", "1"):
        assert json.loads((sweep / job / "results.json").read_text())["mean"]["images"] == 1


def test_the_slurm_launcher_runs_one_task_per_gpu(tmp_path):
    cfg = compose_config(tmp_path, "hydra/launcher=slurm_ddp", "trainer=ddp", "trainer.num_nodes=2",
                         "trainer.devices=8", keep_hydra=True)  # fmt: skip
    launcher = cfg.hydra.launcher
    assert (launcher.nodes, launcher.tasks_per_node, launcher.gpus_per_node) == (2, 8, 8)
    assert launcher._target_.endswith("SlurmLauncher")


def test_wandb_runs_of_a_sweep_share_one_group(tmp_path):
    from hydra.core.hydra_config import HydraConfig

    from rnic.dashboard import name_wandb_run

    sweep = f"hydra.sweep.dir={tmp_path}/my_sweep"
    cfg = compose_config(tmp_path, "logger=wandb", "hydra.mode=MULTIRUN", sweep, keep_hydra=True)
    assert HydraConfig.get().mode.name == "MULTIRUN"
    name_wandb_run(cfg)
    assert cfg.logger.wandb.group == "train/my_sweep"


def test_a_transfer_matrix_holds_the_white_box_runs_on_its_diagonal(tmp_path, trained_checkpoint):
    sources = tmp_path / "sources"
    attack = [
        "data.val_crop=192",
        "max_images=2",
        "attack=apgd",
        "attack.steps=2",
        "attack_run.save_images=true",
    ]
    codecs = {
        "hyperprior": [
            "model=bmshj2018_hyperprior",
            "model.N=32",
            "model.M=48",
            f"model.weights={trained_checkpoint}",
        ],
        "jpeg": ["model=jpeg", "model.quality=30", "attack=square", "attack.queries=10"],
    }
    for name, model in codecs.items():
        overrides = (
            [*attack, *model]
            if name == "hyperprior"
            else [*attack[:2], "attack_run.save_images=true", *model]
        )
        run("attack.py", *overrides, f"hydra.run.dir={sources / name}")
    report = tmp_path / "report"
    run("report.py", str(sources), "--transfer", "--out", str(report))
    rows = {(r["source"], r["target"]): r for r in read_csv(report / "transfer_matrix.csv")}
    assert len(rows) == 4
    for name in codecs:
        white_box = json.loads((sources / name / "results.json").read_text())["mean"]
        (cell,) = [
            r for (s, t), r in rows.items() if s == t and s.startswith("bmshj" if name != "jpeg" else "jpeg")
        ]
        assert float(cell["psnr_adv"]) == pytest.approx(white_box["psnr_adv"], rel=1e-9)
        assert float(cell["psnr_drop"]) == pytest.approx(
            white_box["psnr_clean"] - white_box["psnr_adv"], rel=1e-9
        )
    assert (report / "transfer_matrix.png").stat().st_size > 10_000
    assert "Transfer matrix" in (report / "report.html").read_text()
