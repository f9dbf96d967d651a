"""Every option of every config group composes, and builds what it names."""

from pathlib import Path

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf, open_dict

from rnic.config import build, codec_from_config
from tests.conftest import CONF, compose_config, tiny_widths


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


CLASSICAL = ("jpeg", "jpeg2000", "jpegxl", "webp")


@pytest.mark.parametrize("model", CLASSICAL)
def test_classical_model_options_build_their_coder(tmp_path, model):
    cfg = compose_config(tmp_path, f"model={model}", "model.quality=40", config_name="attack")
    coder = codec_from_config(cfg)
    assert type(coder).__name__ == "ClassicalCodec" and (coder.format, coder.quality) == (model, 40)


# The classes CompressAI codecs outside its zoo's ladder build, and their default lambdas (ELIC's own
# ladder at quality 3; a variable-rate codec's rate 8); and the shipped CPU mbt2018-mean's (quality 2).
FAMILY_CLASSES = {
    "elic": ("Elic2022Official", 0.0016),
    "mbt2018_mean_cpu": ("MeanScaleHyperprior", 0.0067),
    "mbt2018_mean_vbr_cpu": ("MeanScaleHyperpriorVbrAtRate", 0.0067),  # its middle rate: the shipped lambda
    "cheng2020_checkerboard": ("Cheng2020AnchorCheckerboard", 0.0067),
    "bmshj2018_hyperprior_vbr": ("ScaleHyperpriorVbrAtRate", 0.18),
    "mbt2018_mean_vbr": ("MeanScaleHyperpriorVbrAtRate", 0.18),
    "mbt2018_vbr": ("JointAutoregressiveHierarchicalPriorsVbrAtRate", 0.18),
}


@pytest.mark.parametrize("model", [m for m in options("model") if m not in ("custom", *CLASSICAL)])
def test_model_options_build_their_codec(tmp_path, model):
    cfg = compose_config(
        tmp_path, f"model={model}", *tiny_widths([f"model={model}"]), "model.pretrained=false"
    )
    codec = codec_from_config(cfg)
    expected = {"cheng2020": "Cheng2020Anchor", "cheng2020_attn": "Cheng2020Attention"}.get(model)
    expected, lmbda = FAMILY_CLASSES.get(model, (expected, 0.0067))  # the zoo's quality 3 by default
    if expected:
        assert type(codec).__name__ == expected
    module = instantiate(cfg.module, codec=codec)
    assert module.lmbda == {"mse": lmbda}[cfg.model.metric]


def test_codec_family_settings_compose(tmp_path):
    cfg = compose_config(tmp_path, "model=elic", "model.variant=chandelier", *tiny_widths(["model=elic"]))
    codec = codec_from_config(cfg)
    assert type(codec).__name__ == "Elic2022Chandelier" and codec.groups == [4, 4, 8, 16]
    cfg = compose_config(tmp_path, "model=mbt2018_mean_vbr", "model.rate=3", "model.N=16", "model.M=24")
    codec = codec_from_config(cfg)
    assert codec.rate == 3 and instantiate(cfg.module, codec=codec).lmbda == 0.0067
    cfg = compose_config(tmp_path, "model=mbt2018_mean_vbr", "model.rate=9", "model.N=16", "model.M=24")
    with pytest.raises(ValueError, match=r"model\.rate=9 is out of range for MeanScaleHyperpriorVbrAtRate"):
        codec_from_config(cfg)
    cfg = compose_config(tmp_path, "model=elic", "model.variant=official2")
    with pytest.raises(
        ValueError, match="model.variant='official2' is unknown; choose one of: official, chandelier"
    ):
        codec_from_config(cfg)
    cfg = compose_config(tmp_path, "model=mbt2018_mean_vbr", "model.lmbda=0.01", "model.N=16", "model.M=24")
    with pytest.raises(ValueError, match="model.lmbda=0.01: MeanScaleHyperpriorVbrAtRate is variable-rate"):
        build(cfg.module, codec=codec_from_config(cfg))


def test_lambda_follows_metric_and_quality_unless_given(tmp_path):
    cfg = compose_config(tmp_path, "model=bmshj2018_hyperprior", "model.metric=ms-ssim", "model.quality=5")
    assert instantiate(cfg.module, codec=codec_from_config(cfg)).lmbda == 31.73
    cfg = compose_config(tmp_path, "model.lmbda=0.5")
    assert instantiate(cfg.module, codec=codec_from_config(cfg)).lmbda == 0.5


@pytest.mark.parametrize("data", options("data"))
def test_data_options_compose(tmp_path, data, monkeypatch):
    monkeypatch.setenv("RNIC_DATA_DIR", str(tmp_path / "datasets"))
    extra = ["data.source.root=" + str(tmp_path)] if data == "folder" else []
    cfg = compose_config(tmp_path, f"data={data}", *extra)
    datamodule = instantiate(cfg.data)
    if data in ("sample", "photos", "dead_leaves"):  # the photos that ship with packages
        assert len(datamodule.prepare()["train"]) == (15 if data == "photos" else 12)
        assert len(datamodule.prepare()["test"]) == 8
    elif data != "folder":
        assert Path(OmegaConf.to_container(cfg, resolve=True)["data"]["source"]["root"]).parent == (
            tmp_path / "datasets"
        )


@pytest.mark.parametrize("trainer", options("trainer"))
def test_trainer_options_compose(tmp_path, trainer):
    cfg = compose_config(tmp_path, f"trainer={trainer}")
    assert cfg.trainer._target_ == "lightning.pytorch.trainer.Trainer"
    if trainer == "ddp_cpu":
        assert (cfg.trainer.accelerator, cfg.trainer.devices, cfg.trainer.strategy) == ("cpu", 2, "ddp")


@pytest.mark.parametrize("logger", options("logger"))
def test_logger_options_build_loggers(tmp_path, logger):
    cfg = compose_config(tmp_path, f"logger={logger}")
    loggers = [instantiate(entry) for entry in cfg.logger.values()]
    assert loggers
    if logger == "wandb":
        assert cfg.logger.wandb.offline is True


@pytest.mark.parametrize("callbacks", options("callbacks"))
def test_callback_options_build(tmp_path, callbacks):
    cfg = compose_config(tmp_path, f"callbacks={callbacks}")
    for entry in (cfg.callbacks or {}).values():
        instantiate(entry)


@pytest.mark.parametrize("experiment", options("experiment"))
def test_experiment_options_compose(tmp_path, experiment, monkeypatch):
    monkeypatch.setenv("RNIC_DATA_DIR", str(tmp_path))
    entry = (
        "attack"
        if "entry: attack.py" in (CONF / "experiment" / f"{experiment}.yaml").read_text()
        else "train"
    )
    cfg = compose_config(tmp_path, f"experiment={experiment}", config_name=entry, keep_hydra=True)
    if experiment == "paper_attack":
        assert "cheng2020_anchor" in cfg.hydra.sweeper.params.model
    with open_dict(cfg):
        del cfg.hydra
    OmegaConf.to_container(cfg, resolve=True)
    assert instantiate(cfg.data).source is not None


def test_a_codec_outside_the_zoo_plugs_in_with_target(tmp_path):
    cfg = compose_config(
        tmp_path,
        "model=custom",
        "model.codec._target_=compressai.models.FactorizedPrior",
        "+model.codec.N=8",
        "+model.codec.M=12",
        "model.lmbda=0.01",
    )
    codec = codec_from_config(cfg)
    assert type(codec).__name__ == "FactorizedPrior" and codec.M == 12
