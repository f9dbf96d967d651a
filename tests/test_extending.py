"""docs/extending.md's examples, run as the page shows them: the attack, its test, the defence, the training
method with its yaml (composed and instantiated as train.py does), the report section."""

from __future__ import annotations

import re
import sys
import types
from types import SimpleNamespace

import pytest
import torch
from hydra.utils import instantiate

from rnic.attacks import PGD, Threat
from rnic.codecs import build_codec
from tests.conftest import ROOT, compose_config

PAGE = (ROOT / "docs" / "extending.md").read_text()
BLOCK = re.compile(r"^```(\w+)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def blocks(heading: str, language: str) -> list[str]:
    """The fenced blocks of `language` in the section of `heading` (up to the next `## `)."""
    section = PAGE.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    return [code for lang, code in BLOCK.findall(section) if lang == language]


def module_of(name: str, code: str, prelude: str = "") -> types.ModuleType:
    """`code` run as the module `name` (registered, so that a yaml's `_target_` finds it)."""
    module = types.ModuleType(name)
    exec(compile(prelude + code, f"docs/extending.md:{name}", "exec"), module.__dict__)  # noqa: S102
    return module


@pytest.fixture
def codec() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_codec("bmshj2018_factorized", N=16, M=24).eval()


def test_the_attack_example_runs_and_passes_its_own_test(codec, photos):
    attack, test = blocks("An attack", "python")
    search = module_of("random_search", attack).RandomSearch
    x = photos[:, :, :64, :64]
    built = search(codec, threat="l2", eps=0.5, draws=2)
    assert built.threat == "l2" and built.threat_model.name == "l2"  # bind_threat keeps both
    x_adv = built(x)
    assert bool(Threat("l2").contains(x, x_adv, torch.full((2, 1, 1, 1), 0.5)).all())
    assert "threat='l2'" in repr(built) and "draws=2" in repr(built)  # every setting kept
    with pytest.raises(ValueError, match=r"attack\.draws=0 must be >= 1"):
        search(codec, draws=0)
    namespace = {"torch": torch, "RandomSearch": search, "Threat": Threat}
    exec(compile(test, "docs/extending.md:test", "exec"), namespace)  # noqa: S102
    namespace["test_random_search_stays_in_its_threat_set"](codec, x)


def test_the_defence_example_blurs(photos):
    (defence,) = blocks("A defence", "python")[:1]
    prelude = "import kornia\nfrom rnic.defenses import ImageDefense\n"
    box_blur = module_of("box_blur", defence, prelude).BoxBlur
    import kornia

    x = photos[:1, :, :64, :64]
    blurred, params = box_blur(kernel=5).encode(x, None)
    assert params is None and torch.equal(blurred, kornia.filters.box_blur(x, 5, border_type="reflect"))
    with pytest.raises(ValueError, match=r"defense\.box_blur\.kernel=4"):
        box_blur(kernel=4)


def test_the_method_example_composes_from_its_yaml_and_trains(codec, photos, tmp_path, monkeypatch):
    (code,) = blocks("A training method", "python")
    (yaml,) = blocks("A training method", "yaml")
    module = module_of("rnic.methods.paired", code)
    monkeypatch.setitem(sys.modules, "rnic.methods.paired", module)  # where its yaml's _target_ points
    (tmp_path / "conf" / "method").mkdir(parents=True)
    (tmp_path / "conf" / "method" / "paired.yaml").write_text(yaml)
    search_path = f"hydra.searchpath=[file://{tmp_path / 'conf'}]"
    cfg = compose_config(tmp_path, search_path, "method=paired", "method.weight=0.5", "method.ratio=1.0")
    attack = PGD(codec, eps=4 / 255, steps=1)
    method = instantiate(cfg.method, attack=attack)
    assert isinstance(method, module.PairedTraining) and (method.weight, method.ratio) == (0.5, 1.0)
    x = photos[:2, :, :64, :64]
    trainer = SimpleNamespace(codec=codec.train(), lmbda=0.01, metric="mse", global_step=0, global_rank=0)
    step = method.training_loss(trainer, x)
    clean = module.rd_step(codec, x, x, 0.01, "mse").loss
    assert step.logs["train/adv_images"] == 2.0 and float(step.loss) > float(clean) * 0.5
    step.loss.backward()  # the loss reaches the codec
    assert any(p.grad is not None for p in codec.parameters())
    with pytest.raises(ValueError, match=r"method\.weight=-1"):
        module.PairedTraining(attack, weight=-1)


def test_the_report_section_example_keeps_the_highest_vi():
    worst_rows_code = blocks("A report section", "python")[0]
    worst_rows = module_of("worst", worst_rows_code).worst_rows
    rows = [{"vi": 1.0}, {"vi": None}, {"vi": 3.0}, {"vi": 2.0}]
    assert worst_rows(rows, count=2) == [{"vi": 3.0}, {"vi": 2.0}]
