"""The installed package: its version, licence and citation metadata."""

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
