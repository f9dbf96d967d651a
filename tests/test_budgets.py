"""Budgets as fractions on the command line (`attack.eps=8/255`, which Hydra passes as the string '8/255'),
and budgets of k/255 shown as k/255."""

import json

import pytest

from rnic.budgets import format_budget, parse_fraction, parse_fractions
from rnic.config import build_attacks
from rnic.jobs import run_job
from tests.conftest import attack_cfg, compose_config


def test_fractions_and_lists_of_them_become_numbers_and_a_bad_one_is_named():
    assert parse_fraction("8/255") == 8 / 255 and parse_fraction(0.5) == 0.5
    assert parse_fraction(["2/255", 0.01, "4 / 255"]) == [2 / 255, 0.01, 4 / 255]
    for bad in ("8/0", "eight/255", "8/255/2"):
        with pytest.raises(ValueError, match=rf"attack.eps='{bad}' is neither a number nor a fraction a/b"):
            parse_fraction(bad)


def test_the_composed_config_takes_fractions_for_every_budget_and_step(tmp_path, trained_codec):
    cfg = compose_config(tmp_path, "attack=linf", "attack.eps=[2/255,8/255]", "attack.alpha=1/255",
                         config_name="attack")  # fmt: skip
    assert list(cfg.attack.eps) == ["2/255", "8/255"]  # what Hydra hands over
    parse_fractions(cfg)
    assert list(cfg.attack.eps) == [2 / 255, 8 / 255] and cfg.attack.alpha == 1 / 255
    attacks = build_attacks(cfg.attack, trained_codec)
    assert [a.eps for a in attacks] == [2 / 255, 8 / 255]
    assert "eps=8/255" in repr(attacks[1]) and "alpha=1/255" in repr(attacks[1])
    assert format_budget(8 / 255) == "8/255" and format_budget(1e-4) == "0.0001"


def test_attack_py_runs_with_a_fraction_and_refuses_a_bad_one_in_one_line(
    tmp_path, trained_checkpoint, capsys
):
    cfg = attack_cfg(tmp_path / "run", trained_checkpoint, "max_images=1", eps="8/255", steps=1)
    run_job("rnic.evaluation:evaluate_robustness", cfg)
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["key"]["eps"] == 8 / 255 and "eps=8/255" in results["attack"]
    capsys.readouterr()

    cfg = attack_cfg(tmp_path / "bad", trained_checkpoint, "max_images=1", eps="8/O", steps=1)
    with pytest.raises(SystemExit):
        run_job("rnic.evaluation:evaluate_robustness", cfg)
    assert (
        "error: attack.eps='8/O' is neither a number nor a fraction a/b such as 8/255"
        in capsys.readouterr().err
    )
