"""The installed package: its version, licence and citation metadata."""

import subprocess
import sys
from importlib import metadata

import yaml

import rnic
from tests.conftest import ROOT


def test_version_and_licence_come_from_the_installed_metadata():
    assert rnic.__version__ == metadata.version("rnic")
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'license = "Apache-2.0"' in pyproject and 'license-files = ["LICENSE"]' in pyproject
    assert "Apache License" in (ROOT / "LICENSE").read_text().splitlines()[1]


def test_the_citation_names_rnic_and_the_paper_it_reproduces():
    citation = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert citation["cff-version"] == "1.2.0" and citation["version"] == rnic.__version__
    (paper,) = citation["references"]
    assert paper["doi"] == "10.1109/TCSVT.2023.3276442" and [a["family-names"] for a in paper["authors"]] == [
        "Chen",
        "Ma",
    ]


def run_rnic(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rnic", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)  # fmt: skip


def test_python_m_rnic_dispatches_to_each_command_and_names_an_unknown_one():
    unknown = run_rnic("trian")
    assert (
        unknown.returncode == 1
        and "error: unknown command 'trian'; choose one of train, attack" in unknown.stderr
    )
    report = run_rnic("report", "--help")
    assert (
        report.returncode == 0
        and "usage: python -m rnic report" in report.stdout
        and "--check" in report.stdout
    )


def help_groups(command: str) -> set[str]:
    result = run_rnic(command, "--help")
    assert result.returncode == 0, result.stderr[-2000:]
    listed = result.stdout.split("== Configuration groups ==")[1].split("== Config ==")[0]
    return {line.split(":")[0] for line in listed.splitlines() if ": " in line}


def test_help_lists_only_the_groups_that_can_be_chosen():
    train, attack = help_groups("train"), help_groups("attack")
    assert {"model", "data", "attack", "method", "defense", "trainer", "logger", "module/scheduler"} <= train
    assert {"model", "data", "attack", "defense", "experiment", "paths"} <= attack
    # shared/ holds pieces of other configs; attack.py has no trainer nor training method, and its
    # logger group is there for logger=wandb
    assert not {"shared", "hydra"} & (train | attack)
    assert not {"callbacks", "trainer", "module", "method"} & attack and "logger" in attack
