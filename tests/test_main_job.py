"""`python train.py` with no arguments: adversarial finetuning of the shipped middle-rate codec with the
studies' objective, ending with the starting and the finetuned codec side by side under a short
attack=auto."""

import json

import pytest

from rnic.robust_eval import robust_evaluation
from rnic.training import check_starting_weights
from tests.conftest import TINY, compose_config


def test_the_main_job_finetunes_the_shipped_codec_against_the_source(tmp_path):
    cfg = compose_config(tmp_path)
    assert cfg.model.codec.arch == "bmshj2018_hyperprior_cpu" and cfg.model.quality == 2
    assert cfg.model.pretrained is True and not cfg.model.weights
    assert cfg.attack._target_ == "rnic.attacks.PGD" and cfg.attack.threat == "linf"
    assert cfg.attack.eps == pytest.approx(8 / 255) and cfg.attack.steps == 10
    assert cfg.method._target_ == "rnic.methods.MixTraining"
    assert (cfg.method.target, cfg.attack.objective.reference) == ("source", "source")
    assert cfg.module.max_passes == 300
    assert cfg.robust_eval.start is True
    (auto,) = cfg.robust_eval.attacks.values()
    assert auto._target_ == "rnic.attacks.AutoAttack" and auto.eps == cfg.attack.eps
    assert check_starting_weights(cfg) is cfg  # weights: nothing to drop or refuse


@pytest.mark.parametrize("attack", ["linf", "l2", "apgd"])
def test_any_chosen_attack_trains_against_the_source(tmp_path, attack):
    cfg = compose_config(tmp_path, f"attack={attack}")
    assert (cfg.method.target, cfg.attack.objective.reference) == ("source", "source")


def test_from_scratch_is_one_key_away_and_trains_clean(tmp_path):
    cfg = check_starting_weights(compose_config(tmp_path, "model.pretrained=false"))
    assert cfg.attack._target_ == "rnic.attacks.NoAttack" and cfg.robust_eval is None
    assert cfg.model.pretrained is False


@pytest.mark.parametrize(
    "overrides",
    [["attack=linf"], ["attack.steps=3"], ["experiment=smoke"], ["model=mbt2018", "attack=l2"]],
)
def test_adversarial_training_of_a_codec_without_weights_is_refused(tmp_path, overrides):
    cfg = compose_config(tmp_path, "model.pretrained=false", *overrides)
    with pytest.raises(
        ValueError, match=r"neither model.weights nor model.pretrained=true.*allow_random_init"
    ):
        check_starting_weights(cfg)
    allowed = compose_config(tmp_path, "model.pretrained=false", "model.allow_random_init=true", *overrides)
    assert check_starting_weights(allowed).attack._target_ != "rnic.attacks.NoAttack"


def test_the_main_job_ends_with_start_and_finetuned_side_by_side(tmp_path, trained_checkpoint, capsys):
    # robust_eval.start: attack=auto on the starting weights (here a random tiny codec) and the final ones
    # (the session's trained codec), printed side by side with the classical references.
    tiny = [o for o in TINY if not o.startswith(("attack=", "robust_eval", "data.val_crop"))]
    cfg = compose_config(
        tmp_path, *tiny, "model=bmshj2018_hyperprior", "model.N=32", "model.M=48", "data.val_crop=128",
        "robust_eval.max_images=1", "robust_eval.attacks.linf.steps=1", "robust_eval.attacks.linf.queries=2",
    )  # fmt: skip
    figures = robust_evaluation(cfg, trained_checkpoint)
    assert set(figures) == {"linf", "start_linf"}
    saved = {
        name: json.loads((tmp_path / "robust_eval" / name / "results.json").read_text())["mean"]
        for name in ("start_linf", "linf")
    }
    assert saved["start_linf"]["psnr_clean"] < saved["linf"]["psnr_clean"] - 5  # random vs trained weights
    out = capsys.readouterr().out
    table = out[out.index("Worst case, AutoAttack linf 8/255") :]
    row = next(line for line in table.splitlines() if "PSNR attacked" in line).split()
    start, final = saved["start_linf"]["psnr_adv"], saved["linf"]["psnr_adv"]
    assert row[-3:] == [f"{start:.2f}", f"{final:.2f}", f"{final - start:+.2f}"]
    assert "JPEG" in table and "WebP" in table
