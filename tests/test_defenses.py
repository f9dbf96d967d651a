"""Defenses around the codec and adaptive attacks through them (rnic.defenses), on real codecs and photos."""

import json

import pytest
import torch

from rnic import rd
from rnic.attacks import PGD, quantization_proxy
from rnic.codecs import build_codec
from rnic.coding import compress_decompress
from rnic.defenses import (
    JPEG,
    BitDepth,
    Blur,
    DefendedCodec,
    LatentClamp,
    Median,
    Noise,
    RandomTransform,
    Resize,
    SelfEnsemble,
    build_defenses,
)
from rnic.defenses.dihedral import dihedral, inverse_dihedral
from rnic.defenses.latent import measure_latent_ranges, ranges_file, read_latent_ranges, save_latent_ranges
from rnic.evaluation import evaluate_robustness
from tests.conftest import CONF, attack_cfg


@pytest.fixture(scope="module")
def tiny_codec():
    torch.manual_seed(0)
    codec = build_codec("bmshj2018_hyperprior", N=16, M=24).eval()
    codec.update(force=True)
    return codec


def image_defenses():
    return [JPEG(30), Blur(1.5), Median(3), BitDepth(3), Resize(0.5), Noise(0.05), RandomTransform(4)]


@pytest.mark.parametrize("defense", image_defenses(), ids=lambda d: d.name)
def test_each_image_defense_keeps_the_range_and_changes_images_as_documented(defense, photos):
    x = photos[:, :, :128, :128]
    torch.manual_seed(0)
    generators = [torch.Generator().manual_seed(1) for _ in range(x.shape[0])]
    y, params = defense.encode(x, generators)
    assert y.shape[:2] == x.shape[:2]
    if not isinstance(defense, (Blur, Resize)):  # blur and bilinear scaling of [0, 1] images stay in it
        assert y.min() >= 0 and y.max() <= 1
    assert y.min() >= -1e-6 and y.max() <= 1 + 1e-6
    if isinstance(defense, JPEG):  # exactly what libjpeg gives: 8-bit samples, JPEG-like loss
        assert torch.equal(torch.round(y * 255) / 255, y)
        assert 25 < float(rd.psnr(y, x).mean()) < 40
    elif isinstance(defense, BitDepth):
        assert len(torch.unique(y)) <= 2**3
    elif isinstance(defense, Median):  # a 3x3 median removes an isolated spike
        spiked = x.clone()
        spiked[:, :, 64, 64] = 1 - spiked[:, :, 64, 64].round()
        z, _ = defense.encode(spiked, None)
        assert torch.allclose(z[:, :, 64, 64], defense.encode(x, None)[0][:, :, 64, 64], atol=0.2)
    elif isinstance(defense, Blur):  # lowers the high frequencies
        assert (y.diff(dim=-1).abs().mean() < 0.8 * x.diff(dim=-1).abs().mean()).item()
    elif isinstance(defense, Resize):
        assert y.shape[-2:] == (64, 64)
        assert defense.decode(y, params, (128, 128)).shape[-2:] == (128, 128)
    elif isinstance(defense, Noise):
        assert float((y - x).std()) == pytest.approx(0.05, rel=0.2)
    elif isinstance(defense, RandomTransform):  # a permutation of the samples, undone exactly
        assert torch.equal(y.flatten(1).sort(1).values, x.flatten(1).sort(1).values)
        assert torch.equal(defense.decode(y, params, (128, 128)), x)
    assert not torch.equal(y, x)


@pytest.mark.parametrize("defense", [Noise(0.05), RandomTransform(4)], ids=lambda d: d.name)
def test_random_defenses_are_reproducible_under_a_seed(defense, tiny_codec, photos):
    codec = DefendedCodec(tiny_codec, [defense])
    x = photos[:, :, :64, :64]

    def run(seed):  # what the codec is given, its forward and the real coding
        torch.manual_seed(seed)
        return codec._pre(x)[0], codec(x)["x_hat"], compress_decompress(codec, x)[0]

    first, again, other = run(0), run(0), run(1)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first[0], other[0])
    # An image's draw does not depend on its batch mates.
    torch.manual_seed(0)
    assert torch.equal(codec._pre(x[:1])[0], first[0][:1])


@pytest.mark.parametrize("defense", [JPEG(50), BitDepth(4), Median(3)], ids=lambda d: d.name)
def test_bpda_passes_a_nonzero_gradient_where_the_real_step_has_none(defense, photos):
    x = photos[:, :, :64, :64].clone().requires_grad_(True)
    y, _ = defense.encode(x, None)
    (grad,) = torch.autograd.grad(y.square().sum(), x)
    assert bool((grad.flatten(1).abs().amax(1) > 0).all())
    if isinstance(defense, BitDepth):  # the rounding itself: zero gradient without BPDA
        levels = 15
        z = x.detach().requires_grad_(True)
        (plain,) = torch.autograd.grad((torch.round(z * levels) / levels).square().sum(), z)
        assert float(plain.abs().max()) == 0
    assert torch.allclose(
        y.detach(), defense.encode(x.detach(), None)[0], atol=1e-6
    )  # forward: the real step


def test_eot_gradient_variance_falls_with_samples(tiny_codec, photos):
    x = photos[:1, :, :64, :64]
    variances = []
    for samples in (1, 8):
        codec = DefendedCodec(tiny_codec, [Noise(0.05)], eot_samples=samples)
        attack = PGD(codec, threat="linf", eps=4 / 255, steps=1)
        ctx = attack.objective.context(codec, x, None, None)
        grads = []
        for seed in range(6):
            torch.manual_seed(seed)
            point = x.clone().requires_grad_(True)
            with quantization_proxy(codec, "skip"):  # as the attack runs it
                (g,) = torch.autograd.grad(attack.value(point, ctx).sum(), point)
            grads.append(g.flatten())
        variances.append(float(torch.stack(grads).var(0).mean()))
    assert variances[1] < 0.4 * variances[0]  # about 1/8 in expectation


def test_self_ensemble_decodes_its_choice_bit_exactly_and_pays_its_three_bits(tiny_codec, photos):
    x = photos[:, :, :128, :192]  # not square: the quarter turns code a transposed image
    codec = DefendedCodec(tiny_codec, [SelfEnsemble()])
    encoded = codec.compress(x)
    header = encoded["strings"][-1]
    x_hat = codec.decompress(encoded["strings"], encoded["shape"])["x_hat"]
    for i in range(x.shape[0]):
        k = header[i][0] >> 5  # the 3 index bits, first in the header byte
        assert len(header[i]) == 1  # 3 bits: one byte of the stream
        # The same transform coded by the bare codec decodes to the same samples, inverted.
        moved = dihedral(x[i : i + 1], k)
        alone, bpp_alone = compress_decompress(tiny_codec, moved)
        assert torch.equal(x_hat[i : i + 1], inverse_dihedral(alone, k))
        _, bpp = compress_decompress(codec, x[i : i + 1])
        assert float(bpp) == pytest.approx(float(bpp_alone) + 8 / (128 * 192), rel=1e-12)
        # ... and it is the best of the 8 (closest decoded reconstruction).
        errors = [rd.mse(inverse_dihedral(compress_decompress(tiny_codec, dihedral(x[i : i + 1], j))[0], j),
                         x[i : i + 1]) for j in range(8)]  # fmt: skip
        assert int(torch.stack(errors).argmin()) == k
    # The estimated rate of the forward pass also holds the 3 bits.
    out = codec(x)
    assert torch.allclose(-torch.log2(out["likelihoods"]["header"]).sum(1), torch.tensor(3.0))


def test_latent_clamp_ranges_survive_save_and_load_and_clamp_y(tiny_codec, photos, tmp_path):
    ranges = measure_latent_ranges(tiny_codec, [photos])
    checkpoint = tmp_path / "codec.ckpt"
    torch.save({"state_dict": {}, "rnic": {"codec_class": "ScaleHyperprior"}}, checkpoint)
    save_latent_ranges(ranges_file(checkpoint), ranges)  # beside the weights, found from them
    read = read_latent_ranges(checkpoint)
    assert {k: read[k] for k in ranges} == ranges and read["file"] == str(ranges_file(checkpoint))
    clamp = LatentClamp(ranges_from=str(checkpoint))
    codec = DefendedCodec(tiny_codec, [clamp])
    loaded = DefendedCodec(tiny_codec, [LatentClamp(low=[0.0] * 24, high=[0.0] * 24)])
    loaded.load_state_dict(codec.state_dict())  # the ranges are buffers of the defended codec too
    assert loaded.inner[0].low.tolist() == pytest.approx(ranges["low"])
    # Inside the ranges nothing changes; a brighter image's y is clamped.
    assert torch.equal(compress_decompress(codec, photos)[0], compress_decompress(tiny_codec, photos)[0])
    with clamp.installed(tiny_codec):
        y = tiny_codec.g_a(rd.pad(photos * 3, 64)[0])
    assert bool((y.transpose(0, 1).flatten(1).amax(1) <= torch.tensor(ranges["high"]) + 1e-6).all())


def test_bad_settings_are_refused_naming_the_key(tiny_codec, tmp_path):
    for make, key in (
        (lambda: JPEG(0), "defense.jpeg.quality=0"),
        (lambda: JPEG(101), "defense.jpeg.quality=101"),
        (lambda: BitDepth(9), "defense.bitdepth.bits=9"),
        (lambda: Blur(0), "defense.blur.sigma=0"),
        (lambda: Noise(-1), "defense.noise.sigma=-1"),
        (lambda: build_defenses(["sharpen"]), "defense='sharpen'"),
        (lambda: LatentClamp(), "defense.latent_clamp.ranges_from"),
    ):
        with pytest.raises(ValueError, match=key.replace(".", r"\.")):
            make()
    bare = tmp_path / "bare.ckpt"
    torch.save({"rnic": {"codec_class": "ScaleHyperprior"}, "state_dict": {}}, bare)
    with pytest.raises(ValueError, match="holds no latent ranges"):
        LatentClamp(ranges_from=str(bare))
    with pytest.raises(ValueError, match=r"defense\.resize\.factor=0\.25 leaves a 16x16"):
        DefendedCodec(tiny_codec, [Resize(0.25)]).check_size((64, 64))


def defense_cfg(tmp_path, checkpoint, *overrides):
    return attack_cfg(tmp_path, checkpoint, *overrides, eps=0.0314, steps=5)


def test_attack_py_refuses_bad_defense_settings_before_coding(tmp_path, trained_checkpoint):
    with pytest.raises(ValueError, match=r"defense\.jpeg\.quality=0"):
        evaluate_robustness(
            defense_cfg(tmp_path, trained_checkpoint, "defense=jpeg", "defense.jpeg.quality=0")
        )
    with pytest.raises(ValueError, match=r"defense\.latent_clamp\.ranges_from=.*holds no latent ranges"):
        evaluate_robustness(defense_cfg(tmp_path, trained_checkpoint, "defense=latent_clamp"))
    with pytest.raises(ValueError, match=r"defense\.resize\.factor=0\.2 leaves a 38x38"):
        evaluate_robustness(
            defense_cfg(tmp_path, trained_checkpoint, "defense=resize", "defense.resize.factor=0.2")
        )
    assert not (tmp_path / "results.json").exists()


def test_non_adaptive_attack_on_bitdepth_is_weaker_than_the_adaptive_one(tmp_path, trained_checkpoint):
    means = {}
    for adaptive in ("false", "true"):
        folder = tmp_path / adaptive
        defense = ("defense=bitdepth", "defense.bitdepth.bits=3")
        (means[adaptive],) = evaluate_robustness(
            defense_cfg(folder, trained_checkpoint, *defense, f"attack_run.adaptive={adaptive}")
        )
        results = json.loads((folder / "results.json").read_text())
        assert results["defense"] == ["bitdepth"] and results["adaptive"] == (adaptive == "true")
        for record in results["images"]:
            assert record["bpp_cost"] == pytest.approx(record["bpp_clean"] - record["bpp_clean_undefended"])
    # The attack maximises the distortion against the clean (defended) reconstruction, i.e. the VI: the
    # defense-oblivious attack reaches measurably less of it than the one that sees through the rounding
    # (measured on this codec: 5.42 vs 6.03 dB), and no lower attacked PSNR.
    assert means["true"]["vi"] > means["false"]["vi"] + 0.3
    assert means["true"]["psnr_adv"] <= means["false"]["psnr_adv"]
    assert means["false"]["psnr_adv_undefended"] is not None


def test_train_py_validates_through_a_defense(tiny_cfg, tmp_path):
    from rnic.training import train

    results = train(tiny_cfg("defense=[jpeg,noise]", "attack=linf", "attack.steps=1"))
    for kind in ("clean", "attacked"):
        assert results[f"val/{kind}/bpp_real"] > 0 and results[f"val/{kind}/psnr_real"] is not None
    config = (tmp_path / "config.yaml").read_text()
    assert "jpeg:" in config and "noise:" in config


def test_every_defense_yaml_builds_a_defense_of_its_name_by_name_alone():
    """rnic/conf/defense/<name>.yaml holds one key, <name> (center smoothing's also `seed`, the seed of its
    draws: `defense.seed`); `build_defenses([name])` builds it from that file alone, a defence whose `name`
    is <name> (latent_clamp takes its ranges from the run's model.weights: by name alone, the missing
    setting is named)."""
    from omegaconf import OmegaConf

    files = {p.stem: OmegaConf.load(p) for p in (CONF / "defense").glob("*.yaml") if p.stem != "none"}
    assert len(files) >= 10
    for name, config in files.items():
        assert list(config) == ([name, "seed"] if name == "center_smoothing" else [name])
        if name == "latent_clamp":
            with pytest.raises(ValueError, match=r"defense\.latent_clamp\.ranges_from is not set"):
                build_defenses([name])
        else:
            assert build_defenses([name])[name].name == name


def test_auto_behind_a_random_defense_reports_the_draw_it_selected_on(tmp_path, trained_checkpoint):
    """Behind a random defense, auto's winner per image and attack.py's figures come from one draw: the
    reported PSNR is the winner's and never above any member's."""
    overrides = [
        "attack=auto",
        "attack.steps=1",
        "attack.queries=2",
        "attack_run.eot_samples=2",
        "defense=noise",
    ]
    overrides += ["data.val_crop=64", "max_images=1", "defense.noise.sigma=0.05"]
    evaluate_robustness(defense_cfg(tmp_path, trained_checkpoint, *overrides))
    (result,) = [json.loads(p.read_text()) for p in tmp_path.rglob("results.json")]
    for record in result["images"]:
        members = [m["psnr_adv"] for m in record["members"].values() if not m.get("skipped")]
        assert record["psnr_adv"] == pytest.approx(record["members"][record["winner"]]["psnr_adv"], abs=1e-9)
        assert record["psnr_adv"] <= min(members) + 1e-9


def test_a_gradient_attack_takes_the_mean_of_the_draws_as_its_clean_reference(trained_codec, photos):
    """As Square does: behind a random defense the clean reconstruction the objective compares with is the
    mean over eot_samples draws, not one draw."""
    from rnic.defenses import Noise

    class Recording(PGD):  # the real PGD, keeping the context it attacked with
        def perturb(self, x, ctx, eps):
            self.ctx = ctx
            return super().perturb(x, ctx, eps)

    codec = DefendedCodec(trained_codec, [Noise(0.2)], eot_samples=8)
    x = photos[:1, :, :64, :64]
    attack = Recording(codec, eps=1 / 255, steps=1)
    attack(x)
    with torch.no_grad():
        draws = torch.stack([rd.forward_padded(codec, x)[0].clamp(0, 1) for _ in range(33)])
    mean = draws[1:].mean(0)
    assert rd.mse(attack.ctx.clean, mean) < 0.5 * rd.mse(draws[0], mean)
