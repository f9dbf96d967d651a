"""Shipping a CPU codec (benchmarks/codecs_rd.py --ship) and loading it offline: the CPU ELIC
(`model=elic_cpu`, and `model=elic model.pretrained=true`) and the CPU LIC-TCM (`model=tcm_cpu`) from the
package's weights folder, a training run shipped with a card whose figures are the bitstreams the shipped
file codes, and a robust finetuning shipped only beside a complete control (benchmarks/ship_robust.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from rnic import codecs
from rnic.codecs import SHIPPED, build_codec, rd_lambda, shipped_architecture, shipped_weights
from rnic.coding import compress_decompress
from rnic.config import build, codec_from_config, file_sha256
from rnic.io import equal_states, write_state, write_torch
from rnic.training import train
from tests.conftest import ROOT, TINY, compose_config

sys.path.insert(0, str(ROOT / "benchmarks"))
import codecs_rd  # noqa: E402  (a script beside the tests' package, as benchmarks import each other)


@pytest.fixture
def weights_dir(tmp_path, monkeypatch) -> Path:
    """An empty shipped-weights folder in place of rnic/weights/."""
    folder = tmp_path / "weights"
    folder.mkdir()
    monkeypatch.setattr(codecs, "WEIGHTS_DIR", folder)
    return folder


def untrained_shipped(weights_dir: Path, quality: int, arch: str = "elic_cpu") -> dict[str, torch.Tensor]:
    """Weights of a shipped CPU codec's shape (its entropy tables built) saved as its shipped file."""
    torch.manual_seed(quality)
    codec = build_codec(arch, quality=quality)
    codec.update(force=True)
    state = codec.state_dict()
    torch.save(state, weights_dir / f"{arch}-mse-q{quality}.pth")
    return state


@pytest.mark.parametrize("model", ["model=elic", "model=elic_cpu"])
@pytest.mark.parametrize("entry", ["attack", "train"])
def test_elic_pretrained_loads_the_shipped_cpu_elic_at_its_lambda(tmp_path, weights_dir, model, entry):
    # CompressAI released no ELIC weights: model=elic model.pretrained=true is rnic's CPU ELIC, whose
    # quality 2 trained at lambda 0.0067 (not ELIC's own ladder, where quality 2 is 0.0008).
    state = untrained_shipped(weights_dir, 2)
    cfg = compose_config(tmp_path, model, "model.pretrained=true", "model.quality=2", config_name=entry)
    codec = codec_from_config(cfg)
    assert (type(codec).__name__, codec.groups) == ("Elic2022Official", [8, 8, 16, 32, 32])
    loaded = codec.state_dict()
    assert equal_states(loaded, state)
    path = weights_dir / "elic_cpu-mse-q2.pth"
    assert (cfg.model.pretrained_file, cfg.model.pretrained_sha256) == (str(path), file_sha256(path))
    if entry == "train":
        assert build(cfg.module, codec=codec).lmbda == 0.0067
    # Without pretrained weights model=elic is ELIC's own ladder at CompressAI's widths.
    if model == "model=elic":
        cfg = compose_config(tmp_path, model, "model.quality=2", config_name=entry)
        assert cfg.model.codec.arch == "elic" and rd_lambda("mse", 2, cfg.model.codec.arch) == 0.0008


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.quality=5"], "model.quality=5 is out of range for elic_cpu; choose 1..3"),
        (["model.quality=2", "model.N=32"], "model.N/model.M=(32, 96) cannot be combined with model.pretr"),
        (["model.quality=2", "model.variant=chandelier"], "model.variant=chandelier cannot be combined"),
        (["model.quality=2", "model.groups=[16,16,32,32]"], r"model.groups=\[16, 16, 32, 32\] cannot be"),
        (["model.quality=1"], "rnic ships no such weights (shipped: elic_cpu-mse-q2.pth)"),
    ],
)
def test_elic_pretrained_settings_it_was_not_trained_with_are_refused(
    tmp_path, weights_dir, overrides, message
):
    untrained_shipped(weights_dir, 2)
    cfg = compose_config(tmp_path, "model=elic", "model.pretrained=true", *overrides, config_name="attack")
    with pytest.raises(
        (ValueError, FileNotFoundError), match=message.replace("(", r"\(").replace(")", r"\)")
    ):
        codec_from_config(cfg)


@pytest.mark.parametrize("entry", ["attack", "train"])
def test_the_cpu_tcm_loads_its_shipped_weights_at_its_settings(tmp_path, weights_dir, entry):
    state = untrained_shipped(weights_dir, 3, arch="tcm_cpu")
    cfg = compose_config(
        tmp_path, "model=tcm_cpu", "model.pretrained=true", "model.quality=3", config_name=entry
    )
    codec = codec_from_config(cfg)
    loaded = codec.state_dict()
    assert equal_states(loaded, state)
    assert (codec.N, codec.M) == (32, 160) and sum(p.numel() for p in codec.parameters()) == 7_196_085
    if entry == "train":
        assert build(cfg.module, codec=codec).lmbda == 0.018
    refused = {
        "model.entropy_widths=[224,128]": r"model.entropy_widths=\[224, 128\] cannot be combined",
        "model.config=[2,2,2,2,2,2]": r"model.config=\[2, 2, 2, 2, 2, 2\] cannot be combined",
        "model.M=320": r"model.N/model.M=\(32, 320\) cannot be combined",
    }
    for override, message in refused.items():
        cfg = compose_config(tmp_path, "model=tcm_cpu", "model.pretrained=true", "model.quality=3", override)
        with pytest.raises(ValueError, match=message):
            codec_from_config(cfg)


def test_elic_without_rnics_config_names_the_shipped_cpu_elic():
    with pytest.raises(ValueError, match="CompressAI ships no weights for model=elic; rnic ships it at CPU "
                       "widths: model=elic_cpu"):  # fmt: skip
        build_codec("elic", pretrained=True)


def test_a_shipped_run_codes_the_bitstreams_its_card_records(tmp_path, weights_dir, monkeypatch):
    # A tiny hyperprior trained at the middle lambda of a shipped codec of its shape ships as that codec's
    # quality 2, whatever model.quality the run had: its file loads offline and codes the val photos to
    # exactly the bytes its card records; a checkpoint of another shape is refused. A run finetuned from
    # its last.ckpt (the same weights as its best.ckpt: one validation) ships as quality 3, started from
    # the quality 2 file.
    spec = {"zoo": "bmshj2018-hyperprior", "widths": (16, 24), "lambdas": {"mse": (0.0025, 0.0067, 0.018)}}
    monkeypatch.setitem(SHIPPED, "hyperprior_tiny", spec)
    overrides = ["model=bmshj2018_hyperprior", "model.lmbda=0.0067", "model.quality=5"]
    runs = {}
    for name, extra in (("q2", ["trainer.val_check_interval=4"]), ("q3", ["model.lmbda=0.018"])):
        if name == "q3":
            extra.append(f"model.weights={runs['q2'] / 'checkpoints' / 'last.ckpt'}")
        cfg = compose_config(tmp_path / name, *TINY, "model.N=16", "model.M=24", *overrides, *extra)
        train(cfg)
        runs[name] = run = Path(cfg.paths.output_dir)
        (run / ".hydra").mkdir()
        (run / ".hydra" / "overrides.yaml").write_text(
            OmegaConf.to_yaml([*overrides, *extra])
        )  # as Hydra does
    run = runs["q2"]
    out = tmp_path / "benchmark"
    ship = [
        "codecs_rd.py",
        "--arch",
        "hyperprior_tiny",
        "--ship",
        *map(str, runs.values()),
        "--out",
        str(out),
    ]
    monkeypatch.setattr(sys, "argv", ship)
    codecs_rd.main()
    path = shipped_weights("hyperprior_tiny", "mse", 2)
    card = json.loads(path.with_suffix(".json").read_text())
    assert card["sha256"] == file_sha256(path) and card["quality"] == 2 and card["lmbda"] == 0.0067
    assert card["architecture"] == "bmshj2018-hyperprior" and card["widths"] == {"N": 16, "M": 24}
    assert card["data"].startswith("data=sample: 12 train photos (random 128x128 crops, batch 2,")
    command = ["python train.py", *overrides, "trainer.val_check_interval=4"]
    assert card["command"] == " ".join(command) and card["learning_curve"]["step"]
    codec = build_codec("hyperprior_tiny", quality=2, pretrained=True).eval()
    codec.update(force=True)
    _, bpp = compress_decompress(codec, codecs_rd.sample_photos()[1])
    assert bpp.tolist() == card["clean"]["learned"]["bpp"]
    assert [p["quality"] for p in json.loads((out / "codecs_rd.json").read_text())["points"]] == [2, 3]
    assert card["started_from"] is None
    assert (
        json.loads(shipped_weights("hyperprior_tiny", "mse", 3).with_suffix(".json").read_text())[
            "started_from"
        ]
        == path.name
    )
    monkeypatch.setattr(sys, "argv", [*ship, "--split", "test"])
    with pytest.raises(SystemExit):  # cards hold the val photos' figures
        codecs_rd.main()
    monkeypatch.setattr(sys, "argv", ["codecs_rd.py", "--arch", "elic_cpu", "--ship", str(run)])
    with pytest.raises(SystemExit, match="is not a checkpoint of elic_cpu"):
        codecs_rd.main()


def test_an_elic_card_records_its_family_and_channel_groups():
    assert shipped_architecture("elic_cpu") == {
        "architecture": "elic",
        "widths": {"N": 64, "M": 96},
        "settings": {"variant": "official", "groups": [8, 8, 16, 32, 32]},
    }


def test_a_bd_figure_without_a_common_range_is_none_in_the_results():
    # The learned curve entirely above JPEG's rates (no common rate range: BD-PSNR has nothing to integrate)
    # and below WebP's PSNRs: the summary says n/a instead of failing to write NaN after weights shipped.
    def point(quality, bpp, learned, jpeg_bpp, webp_psnr):
        return {
            "quality": quality,
            "learned": {"bpp": [bpp], "psnr": [learned]},
            "jpeg": {"bpp": [jpeg_bpp], "psnr": [learned - 3]},
            "webp": {"bpp": [bpp], "psnr": [webp_psnr]},
        }

    points = [point(1, 0.4, 23.0, 0.1, 30.0), point(2, 0.5, 24.0, 0.2, 31.0), point(3, 0.6, 25.0, 0.3, 32.0)]
    summary = codecs_rd.bd_summary(points)
    assert summary["jpeg"]["bd_psnr"] is None and summary["webp"]["bd_rate"] is None
    assert summary["webp"]["bd_psnr"] == pytest.approx(-7.0)
    json.dumps(summary, allow_nan=False)


def test_ship_robust_needs_a_complete_control_and_adds_evaluations_of_the_shipped_weights(
    tmp_path, weights_dir, monkeypatch
):
    # A robust run and its equal-compute control (tiny codec, a few passes, attack=auto cut short): while
    # the control's evaluation is unfinished (no results.json yet) shipping is refused before any file is
    # written; once it is there, the weights ship with a card whose evaluations are the run's.
    import ship_robust

    spec = {"zoo": "bmshj2018-hyperprior", "widths": (16, 24), "lambdas": {"mse": (0.0025, 0.0067, 0.018)}}
    monkeypatch.setitem(SHIPPED, "hyperprior_tiny", spec)
    tiny = [o for o in TINY if o not in ("robust_eval=null", "attack=none")]
    overrides = [
        *tiny, "model=bmshj2018_hyperprior", "model.N=16", "model.M=24", "model.lmbda=0.0067",
        "model.quality=2", "model.codec.arch=hyperprior_tiny", "module.max_passes=6", "data.val_crop=256",
        "robust_eval.start=false", "robust_eval.attacks.linf.steps=1", "robust_eval.attacks.linf.queries=2",
    ]  # fmt: skip
    base = weights_dir / "hyperprior_tiny-mse-q2.pth"  # the shipped file a robust finetuning starts from
    torch.save(build_codec("hyperprior_tiny", quality=2).state_dict(), base)
    runs = {}
    for name, extra in (("robust", []), ("control", ["method=none"])):
        cfg = compose_config(tmp_path / name, *overrides, *extra)
        train(cfg)
        runs[name] = run = Path(cfg.paths.output_dir)
        (run / ".hydra").mkdir()
        (run / ".hydra" / "overrides.yaml").write_text(OmegaConf.to_yaml([*overrides, *extra]))
    results = runs["control"] / "robust_eval" / "linf" / "results.json"
    kept = results.read_text()
    results.unlink()
    monkeypatch.setattr(
        sys, "argv", ["ship_robust.py", str(runs["robust"]), "--control", str(runs["control"])]
    )
    with pytest.raises(SystemExit, match="control has no robust_eval"):
        ship_robust.main()
    assert list(weights_dir.iterdir()) == [base]
    results.write_text(kept)
    ship_robust.main()
    path = weights_dir / "hyperprior_tiny-mse-q2-mix.pth"
    card = json.loads(path.with_suffix(".json").read_text())
    assert card["sha256"] == file_sha256(path) and set(card["evaluations"]) == {"linf"}

    # --card: the shipped weights attacked on the test photos by attack.py, beside the control's robust_eval
    # of the same attack there, join the card; other weights, another control or attack are refused.
    from rnic.evaluation import evaluate_robustness
    from rnic.robust_eval import robust_evaluation

    control_cfg = OmegaConf.load(runs["control"] / "config.yaml")
    control_cfg.robust_eval.update(splits=["test"], max_images=2)
    robust_evaluation(control_cfg, runs["control"] / "checkpoints" / "final.ckpt")
    job = OmegaConf.load(runs["control"] / "robust_eval" / "linf_test" / "config.yaml")
    attacked = {}
    for name, robust in (("shipped", "mix"), ("base", None)):  # the shipped robust weights, and others
        job.model.update(weights=None, pretrained=True, robust=robust)
        job.model.codec.update(pretrained=True, robust=robust)
        job.paths.output_dir = str(attacked.setdefault(name, tmp_path / f"attack_{name}"))
        evaluate_robustness(job)
    card_path = path.with_suffix(".json")
    add = [
        "ship_robust.py",
        str(attacked["shipped"]),
        "--control",
        str(runs["control"]),
        "--card",
        str(card_path),
    ]
    for argv, message in (
        (
            [*add[:1], str(attacked["base"]), *add[2:]],
            "attacked other weights than hyperprior_tiny-mse-q2-mix.pth",
        ),
        ([*add[:3], str(runs["robust"]), *add[4:]], "trains otherwise than the card's control"),
    ):
        monkeypatch.setattr(sys, "argv", argv)
        with pytest.raises(SystemExit, match=message):
            ship_robust.main()
        assert json.loads(card_path.read_text()) == card
    monkeypatch.setattr(sys, "argv", add)
    ship_robust.main()
    added = json.loads(card_path.read_text())
    assert {k: v for k, v in added["evaluations"].items() if k != "linf_test"} == card["evaluations"]
    test_split = added["evaluations"]["linf_test"]
    control_results = json.loads((runs["control"] / "robust_eval" / "linf_test" / "results.json").read_text())
    assert (
        test_split["weights"] == path.name and test_split["attack"] == card["evaluations"]["linf"]["attack"]
    )
    assert added["control"]["evaluations"]["linf_test"]["mean"]["psnr_adv"] == pytest.approx(
        control_results["mean"]["psnr_adv"]
    )
    gains = [
        a - c["psnr_adv"]
        for a, c in zip(test_split["per_image"]["psnr_adv"], control_results["images"], strict=True)
    ]
    assert added["gain_psnr_adv"]["linf_test"]["mean"] == pytest.approx(sum(gains) / len(gains))
    monkeypatch.setattr(sys, "argv", add)
    with pytest.raises(SystemExit, match="holds a linf_test evaluation already"):
        ship_robust.main()


def test_equal_weights_are_written_as_equal_files(tmp_path):
    # Shipped weights are re-written whenever their card is (benchmarks/ship_robust.py, codecs_rd.py
    # --ship): equal weights must give the same bytes, or git and the card's SHA-256 see a change that
    # is not one. torch.save into a file names the archive's folder after that (temporary) file.
    state = build_codec("bmshj2018_hyperprior", N=16, M=24).state_dict()
    first, second = write_torch(tmp_path / "a.pth", state), write_torch(tmp_path / "b.pth", state)
    assert first.read_bytes() == second.read_bytes()
    loaded = torch.load(second, weights_only=True)
    assert equal_states(loaded, state)


def test_a_shipped_file_of_equal_weights_is_kept_byte_for_byte(tmp_path):
    # A card written again (new evaluations) re-ships its weights: a file that holds them already, however
    # it was saved, is left as it is; other weights replace it.
    state = build_codec("bmshj2018_hyperprior", N=16, M=24).state_dict()
    path = tmp_path / "shipped.pth"
    torch.save(state, path)  # as an older tool saved it: other bytes than write_torch's
    before = path.read_bytes()
    write_state(path, {k: v.clone() for k, v in state.items()})
    assert path.read_bytes() == before
    for changed in (
        {**state, "g_a.0.bias": state["g_a.0.bias"] + 1},  # other values
        {**state, "g_a.0.bias": state["g_a.0.bias"].double()},  # equal values, another dtype
    ):
        write_state(path, changed)
        assert equal_states(torch.load(path, weights_only=True), changed)
    path.write_bytes(b"truncated")  # a file that is not weights is replaced, not an error
    write_state(path, state)
    assert equal_states(torch.load(path, weights_only=True), state)


def test_a_variable_rate_run_ships_as_one_file_with_a_card_per_rate(tmp_path, weights_dir, monkeypatch):
    # A tiny mbt2018-mean-vbr trained every rate, starting from a fixed-rate mbt2018-mean's weights: it
    # ships as one file that codes each rate to the bytes of that rate's card, at that rate's lambda; the
    # learning curve is in the card of the rate it validated at.
    spec = {**SHIPPED["mbt2018_mean_vbr_cpu"], "widths": (16, 24)}
    monkeypatch.setitem(SHIPPED, "vbr_tiny", spec)
    fixed = tmp_path / "fixed.pth"
    torch.manual_seed(0)
    torch.save(build_codec("mbt2018_mean", N=16, M=24).state_dict(), fixed)
    overrides = [
        "model=mbt2018_mean_vbr_cpu", "model.codec.arch=vbr_tiny", "model.N=16", "model.M=24",
        f"model.weights={fixed}",
    ]  # fmt: skip
    cfg = compose_config(tmp_path / "run", *TINY, *overrides)
    train(cfg)
    run = Path(cfg.paths.output_dir)
    (run / ".hydra").mkdir()
    (run / ".hydra" / "overrides.yaml").write_text(OmegaConf.to_yaml(overrides))
    monkeypatch.setattr(
        sys, "argv", ["codecs_rd.py", "--arch", "vbr_tiny", "--ship", str(run), "--out", str(tmp_path / "b")]
    )
    codecs_rd.main()
    path = weights_dir / "vbr_tiny-mse.pth"
    assert sorted(p.name for p in weights_dir.iterdir()) == [
        "vbr_tiny-mse-q1.json", "vbr_tiny-mse-q2.json", "vbr_tiny-mse-q3.json", "vbr_tiny-mse.pth"
    ]  # fmt: skip
    _, x = codecs_rd.sample_photos()
    for quality, lmbda in zip((1, 2, 3), (0.0025, 0.0067, 0.018), strict=True):
        card = json.loads(codecs.shipped_card("vbr_tiny", "mse", quality).read_text())
        assert (card["file"], card["sha256"]) == (path.name, file_sha256(path))
        assert (card["quality"], card["lmbda"]) == (quality, lmbda)
        assert ("learning_curve" in card) == (quality == 2)  # model.rate=2 validated
        codec = build_codec("vbr_tiny", quality=quality, pretrained=True).eval()
        assert codec.rate == quality
        codec.update(force=True)
        assert compress_decompress(codec, x)[1].tolist() == card["clean"]["learned"]["bpp"]


def test_a_variable_rate_codec_starts_from_its_fixed_rate_architectures_weights(tmp_path):
    # The shipped fixed-rate mbt2018-mean loads into the CPU mbt2018-mean-vbr: every weight they share is
    # the fixed-rate one (the bottleneck's under its variable-rate names), the gains are the shipped ones.
    # The scale hyperprior's weights are not of its architecture and are refused.
    fixed = shipped_weights("mbt2018_mean_cpu", "mse", 2)
    state = torch.load(fixed, weights_only=True)
    codec = codecs.load_weights(build_codec("mbt2018_mean_vbr_cpu", quality=2), fixed)
    loaded = codec.state_dict()
    shared = [k for k in state if not k.startswith("entropy_bottleneck.") or k.endswith("quantiles")]
    assert equal_states({k: loaded[k] for k in shared}, {k: state[k] for k in shared})
    for i in range(5):
        assert torch.equal(
            loaded[f"entropy_bottleneck._matrix{i}"], state[f"entropy_bottleneck.matrices.{i}"]
        )
        assert torch.equal(loaded[f"entropy_bottleneck._bias{i}"], state[f"entropy_bottleneck.biases.{i}"])
    assert loaded["Gain"].tolist() == pytest.approx([0.611, 1.0, 1.639])
    with pytest.raises(ValueError, match="does not fit MeanScaleHyperpriorVbrAtRate"):
        codecs.load_weights(codec, shipped_weights("bmshj2018_hyperprior_cpu", "mse", 2))
    with pytest.raises(ValueError, match=r"model.gains=\[1.0, 0.5\] must be positive and increasing"):
        build_codec("mbt2018_mean_vbr", quality=1, N=16, M=24, rate=1, gains=[1, 0.5])
