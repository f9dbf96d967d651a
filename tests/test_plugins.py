"""A plug-in of each kind (attack, image and codec defense, training method) in a package outside rnic,
with its yaml on Hydra's search path, runs through attack.py's job and train.py's without editing any rnic
file."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import yaml

from rnic.evaluation import evaluate_robustness
from rnic.training import train
from tests.conftest import ROOT, TINY, compose_config, tiny_widths

PACKAGE = '''
import torch

from rnic.attacks import Attack
from rnic.defenses import CodecDefense, ImageDefense
from rnic.methods import TrainingMethod, rd_step


class SignNoise(Attack):
    """Random signs of the L-inf budget on every sample: an attack with no gradient."""

    gradient_free = True
    threat = "linf"

    def perturb(self, x, ctx, eps):
        return x + eps * torch.sign(torch.randn_like(x))


class Posterize(ImageDefense):
    """Fewer intensity levels before encoding."""

    name = "posterize"

    def __init__(self, levels: int = 32):
        super().__init__()
        self.levels = levels

    def encode(self, x, generators):
        return torch.round(x * (self.levels - 1)) / (self.levels - 1), None


class Mirror(CodecDefense):
    """Code the image and its mirror image; send the closer decoded one (1 header bit)."""

    name = "mirror"
    variants = 2

    def apply(self, x, k):
        return x.flip(-1) if k else x

    def undo(self, x_hat, k):
        return x_hat.flip(-1) if k else x_hat


class FlipTraining(TrainingMethod):
    """The RD loss with the first `ratio` of the batch mirrored along `axis`."""

    name = "flip"

    def __init__(self, attack, axis: int = -1, **kwargs):
        super().__init__(attack, **kwargs)
        self.axis = axis

    def training_loss(self, module, x):
        inputs = torch.cat([x[: self.count(x.shape[0])].flip(self.axis), x[self.count(x.shape[0]) :]])
        step = rd_step(module.codec, inputs, inputs, module.lmbda, module.metric)
        step.logs["train/flipped"] = float(self.count(x.shape[0]))
        return step

    def record(self):
        return {"flip_axis": self.axis}
'''
YAML = {
    "attack/sign_noise.yaml": """
        defaults:
          - /shared/attack_common@_here_
          - _self_
        _target_: toyplug.SignNoise
        eps: 0.01568627450980392
    """,
    "defense/posterize.yaml": """
        posterize:
          _target_: toyplug.Posterize
          levels: 16
    """,
    "defense/mirror.yaml": """
        mirror:
          _target_: toyplug.Mirror
    """,
    "method/flip.yaml": """
        defaults:
          - /shared/method_common@_here_
          - _self_
        _target_: toyplug.FlipTraining
        axis: -1
    """,
    "model/small_hyperprior.yaml": """
        defaults:
          - bmshj2018_hyperprior
          - _self_
        N: 16
        M: 24
        quality: 1
    """,
}


@pytest.fixture
def plugins(tmp_path, monkeypatch):
    """The search-path override that finds the plug-ins' yaml files (their package importable)."""
    (tmp_path / "toyplug.py").write_text(PACKAGE)
    for name, text in YAML.items():
        path = tmp_path / "conf" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    monkeypatch.syspath_prepend(str(tmp_path))
    return f"hydra.searchpath=[file://{tmp_path / 'conf'}]"


def test_a_plugin_attack_and_defense_run_through_attack_py(plugins, tmp_path):
    out = tmp_path / "attack"
    cfg = compose_config(out, plugins, "attack=sign_noise", "defense=posterize", "max_images=1",
                         "data.val_crop=128", config_name="attack")  # fmt: skip
    evaluate_robustness(cfg)
    results = json.loads((out / "results.json").read_text())
    assert results["complete"] and results["defense"] == ["posterize"]
    (image,) = results["images"]
    assert image["linf"] == pytest.approx(4.0, abs=1e-3)  # the plug-in's budget, 4/255, on decoded bits
    assert image["psnr_adv"] < image["psnr_clean"]


def test_a_plugin_codec_defense_sends_its_closest_variant(plugins, tmp_path):
    """attack.py behind an image and a codec plug-in: each image's clean figures are those of the closer of
    its two variants coded alone (behind the image defense), plus the header's one byte."""
    from torchvision.transforms import v2

    from rnic import rd
    from rnic.coding import compress_decompress
    from rnic.config import codec_from_config
    from rnic.data import SampleImages, read_image
    from rnic.defenses import build_defenses

    out = tmp_path / "attack"
    cfg = compose_config(out, plugins, "attack=none", "defense=[posterize,mirror]", "max_images=2",
                         "data.val_crop=128", config_name="attack")  # fmt: skip
    evaluate_robustness(cfg)
    results = json.loads((out / "results.json").read_text())
    assert results["defense"] == ["posterize", "mirror"]
    codec = codec_from_config(cfg).eval()
    posterize = build_defenses({"posterize": cfg.defense.posterize})["posterize"]
    for record, path in zip(results["images"], SampleImages().splits()["val"], strict=False):
        x = v2.CenterCrop(128)(read_image(path))[None]
        coded = posterize.encode(x, None)[0]
        variants = []  # (error against the coded input, decoded image in the input's geometry, bpp)
        for k in (0, 1):
            x_hat, bpp = compress_decompress(codec, coded.flip(-1) if k else coded)
            decoded = x_hat.flip(-1) if k else x_hat
            variants.append((float(rd.mse(decoded.clamp(0, 1), coded)), decoded, float(bpp)))
        _, decoded, bpp = min(variants, key=lambda v: v[0])
        assert record["psnr_clean"] == pytest.approx(float(rd.psnr(decoded, x)), abs=1e-4)
        assert record["bpp_clean"] == pytest.approx(bpp + 8 / 128**2, rel=1e-9)


def test_a_plugin_training_method_runs_through_train_py(plugins, tmp_path):
    # The method's own key (method.axis) set on the command line like any shared one (method.validate).
    overrides = (
        plugins,
        "method=flip",
        "method.axis=-2",
        "attack=linf",
        "attack.steps=1",
        "method.validate=false",
    )
    train(compose_config(tmp_path, *TINY, *tiny_widths([]), *overrides))
    final = json.loads((tmp_path / "final_metrics.json").read_text())
    assert final["method"] == "flip" and final["passes"] == pytest.approx(4.0) and final["flip_axis"] == -2


def test_a_users_model_config_runs_through_the_rnic_command_from_another_folder(plugins, tmp_path):
    """`python -m rnic train` in a folder of the user's, with the user's model yaml on Hydra's search path:
    the run composes rnic's packaged configs with it and writes under that folder."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(tmp_path)]), "RNIC_LOG_DIR": "runs"}
    env.pop("RNIC_DATA_DIR", None)
    command = [sys.executable, "-m", "rnic", "train", plugins, "model=small_hyperprior", *TINY]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = (tmp_path / "runs" / "train" / "runs").iterdir()
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert (config["model"]["N"], config["model"]["M"], config["model"]["quality"]) == (16, 24, 1)
    assert json.loads((run / "final_metrics.json").read_text())["step"] == 4
    assert (run / "train.log").is_file()  # Hydra's job is named after the command, as with train.py
