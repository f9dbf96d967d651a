"""Center smoothing: the defended codec sends a real stream of its center copy, its certificate follows the
paper's procedure, and no adaptive attack within the radius moves it past the certified bound."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch

from rnic import rd
from rnic.attacks import NoAttack
from rnic.coding import compress_decompress
from rnic.defenses.smoothing import (
    CenterSmoothing,
    KnownDrawsAttack,
    SmoothedCodec,
    center_of,
    certified_level,
    min_samples,
)
from rnic.methods import NoiseTraining, rd_step
from tests.conftest import compose_config

# Small enough for the suite; alpha small enough that the honesty test cannot flake.
SMOOTHING = ["defense=center_smoothing", "defense.center_smoothing.sigma=0.1",
             "defense.center_smoothing.samples=100", "defense.center_smoothing.certify_samples=1000",
             "defense.center_smoothing.alpha=0.001", "defense.center_smoothing.delta=0.3"]  # fmt: skip


def smoothing_cfg(tmp_path, checkpoint, *overrides):
    return compose_config(
        tmp_path, "model=bmshj2018_hyperprior", "model.N=32", "model.M=48", f"model.weights={checkpoint}",
        "data.val_crop=64", "max_images=2", *SMOOTHING, *overrides, config_name="attack",
    )  # fmt: skip


def test_the_center_is_the_sample_with_the_smallest_median_distance():
    points = torch.tensor([[0.0], [1.0], [1.1], [1.2], [5.0]])
    index, radius = center_of(points)
    assert index == 2 and radius == pytest.approx(0.1)
    assert min_samples(0.005, 0.05) == 1199  # the paper's defaults: ln(400) / 0.005 = 1198.3
    assert certified_level(1.0, 1.0, 0.05, 0.005, 10**6) == pytest.approx(0.8698 + 0.0016276, abs=1e-4)


def test_the_smoothed_codec_sends_the_stream_of_its_center_copy(trained_codec, photos):
    smoothing = CenterSmoothing(sigma=0.05, samples=40, alpha=0.1, delta=0.2, batch=16)
    smoothed = SmoothedCodec(trained_codec, smoothing)
    x = photos[..., :64, :64]
    x_hat, bpp = compress_decompress(smoothed, x)
    flag_bpp = 8 / (64 * 64)  # the byte saying whether the center passed its check
    for i in range(len(x)):
        seed = smoothed.last_choice["smoothing_seed"][i]  # the recorded seed reproduces the draws
        prediction = smoothing.predict(trained_codec, x[i], seed=seed)
        alone, bpp_alone = compress_decompress(trained_codec, prediction["copy"][None])
        assert float(bpp[i]) == pytest.approx(
            float(bpp_alone) + flag_bpp
        )  # the very stream of the center copy
        assert torch.allclose(x_hat[i : i + 1], alone, atol=1e-5)  # decoded in a batch of 2 or alone
        assert torch.allclose(x_hat[i], prediction["center"], atol=1e-5)  # forward and decoded agree


def test_every_encode_draws_fresh_noise_unless_a_seed_is_given(trained_codec, photos):
    """The guarantee is a probability over fresh draws at the perturbed input: by default every encode
    draws from the OS; defense.seed starts a reproducible stream, in which the clean
    and the attacked encodes still draw independently. The records keep each encode's seed."""
    x = photos[:1, :, :32, :32]

    def seeds(seed, encodes=2):
        smoothed = SmoothedCodec(trained_codec, CenterSmoothing(samples=17, alpha=0.1, delta=0.3, seed=seed))
        drawn = []
        for _ in range(encodes):
            smoothed.compress(x)
            drawn += smoothed.last_choice["smoothing_seed"]
        return drawn

    fresh = seeds(None)
    assert fresh[0] != fresh[1] and fresh != seeds(None)
    studied = seeds(7)
    assert studied[0] != studied[1] and studied == seeds(7) and studied != seeds(8)


def test_abstention_is_a_first_class_outcome(trained_codec, photos):
    """The stream says whether the center passed its check; an attacked image whose center fails is
    abstained, not certified, and the certified means count it (a seed of a reproducible stream where
    the clean center passes and the attacked one fails: the check is a coin flip at these settings)."""
    from rnic.defenses.smoothing import certified_means, certify_images
    from rnic.evaluation.pairs import code_pair

    x = photos[:1, :, :32, :32]
    x_adv = (x + 0.02 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    for seed in range(40):
        smoothing = CenterSmoothing(
            sigma=0.05, samples=17, certify_samples=50, alpha=0.1, delta=0.3, seed=seed
        )
        smoothed = SmoothedCodec(trained_codec, smoothing)
        records, clean_hat, adv_hat = code_pair(smoothed, x, x_adv)
        if not records[0]["smoothing_abstain_clean"] and records[0]["smoothing_abstain_adv"]:
            break
    else:
        raise AssertionError("no seed made the attacked center fail its check")
    encoded = smoothed.compress(x_adv)
    decoded = smoothed.decompress(encoded["strings"], encoded["shape"])
    assert decoded["center_passed"] == [not smoothed.last_choice["smoothing_abstain"][0]]
    certify_images(smoothed, x, clean_hat, adv_hat, records, [0.001])
    (entry,) = records[0]["certified"]
    assert entry["abstain"] and entry["abstain_reason"] == "attacked" and entry["psnr_floor"] is None
    (means,) = certified_means(records)
    assert means["abstained"] == means["abstained_attacked"] == 1 and means["abstention_rate"] == 1.0


def test_bad_settings_are_refused_before_any_image_is_coded(tmp_path, trained_checkpoint):
    from rnic.evaluation import evaluate_robustness

    for overrides, message in (
        (["defense.center_smoothing.sigma=0"], r"defense\.center_smoothing\.sigma=0 must be > 0"),
        (["defense.center_smoothing.samples=30"], r"defense\.center_smoothing\.samples=30 is below the 43"),
        (["certify.enabled=true", "certify.eps=[-1]", "attack=none"], r"certify\.eps=\[-1\]"),
        (
            ["certify.enabled=true", "attack=apgd", "attack.threat=linf"],
            r"attack\.threat=linf: the certificate",
        ),
    ):
        with pytest.raises(ValueError, match=message):
            evaluate_robustness(smoothing_cfg(tmp_path, trained_checkpoint, *overrides))
        assert not any(tmp_path.iterdir())
    cfg = compose_config(tmp_path, "model=jpeg", "certify.enabled=true", "attack=none", config_name="attack")
    with pytest.raises(ValueError, match=r"certify=true needs defense=center_smoothing"):
        evaluate_robustness(cfg)


def test_no_adaptive_attack_moves_the_smoothed_reconstruction_past_its_certificate(
    tmp_path, trained_checkpoint
):
    """APGD under the L2 threat at the certified radius, through the smoothing with EOT, on real bitstreams:
    the attacked smoothed reconstruction stays within the certified PSNR floor of the clean one."""
    from rnic.evaluation import evaluate_robustness
    from rnic.evaluation.checks import check_card

    attack = [
        "attack=apgd",
        "attack.threat=l2",
        "attack.eps=0.05",
        "attack.steps=10",
        "attack_run.eot_samples=4",
        "attack.round_8bit=false",
    ]  # at this radius 8-bit delivery would round the perturbation away
    cfg = smoothing_cfg(
        tmp_path, trained_checkpoint, *attack, "certify.enabled=true", "certify.eps=[0.025,0.05]"
    )
    evaluate_robustness(cfg)
    results = json.loads((tmp_path / "results.json").read_text())
    for record in results["images"]:
        at_eps = next(c for c in record["certified"] if c["eps"] == 0.05)
        if at_eps["abstain"]:  # a center failed its check (fresh draws): no certificate to hold
            assert at_eps["abstain_reason"] in ("clean", "attacked"), record["certified"]
            continue
        assert record["psnr_in"] == pytest.approx(at_eps["eps_psnr"], abs=0.05)  # the whole radius used
        moved = record["psnr_adv_vs_clean"]  # None: the smoothed reconstruction did not move at all
        assert moved is None or moved >= at_eps["psnr_floor"], (moved, at_eps)
        assert at_eps["eps_psnr"] == pytest.approx(10 * math.log10(3 * 64 * 64 / 0.05**2))
        smaller = next(c for c in record["certified"] if c["eps"] == 0.025)
        assert smaller["psnr_floor"] >= at_eps["psnr_floor"]  # a larger radius never certifies more
    assert [c["eps"] for c in results["certified"]] == [0.025, 0.05] and check_card(tmp_path) == []
    assert "psnr_floor@0.05" in (tmp_path / "results.csv").read_text().splitlines()[0]


def test_noise_training_reconstructs_the_source_from_noisy_inputs(trained_codec, photos):
    method = NoiseTraining(NoAttack(trained_codec), sigma=0.1, ratio=1.0)
    module = SimpleNamespace(codec=trained_codec, lmbda=0.0067, metric="mse", global_step=3, global_rank=0)
    x = photos[..., :64, :64]
    step = method.training_loss(module, x)
    assert step.targets is x and not method.validate
    generator = torch.Generator().manual_seed(method.seed(3, 0))
    noisy = x + 0.1 * torch.randn(x.shape, generator=generator)
    assert float(step.loss) == pytest.approx(
        float(rd_step(trained_codec, noisy, x, 0.0067, "mse").loss), rel=1e-5
    )
    with pytest.raises(ValueError, match=r"method\.sigma=0 must be > 0"):
        NoiseTraining(NoAttack(trained_codec), sigma=0)
    assert rd.psnr(x, noisy).mean() < 25  # the inputs really are noisy


def test_certification_is_refused_where_the_forward_is_not_what_the_decoder_outputs(tmp_path):
    """Context-model codecs (mbt2018, cheng2020, CompressAI's checkerboard and ELIC latent codecs) round
    their latent without the predicted means in the forward: a certificate computed on it would not be
    about the decoded image. One predicate decides, from the codec's modules, not from a list of names."""
    from compressai.models import (
        Cheng2020Anchor,
        Cheng2020AnchorCheckerboard,
        Elic2022Official,
        JointAutoregressiveHierarchicalPriors,
        ScaleHyperprior,
    )

    from rnic.coding import forward_is_decoded
    from rnic.evaluation import evaluate_robustness

    # The checkerboard and ELIC contexts quantise around their means in the forward too
    # (tests/test_codecs.py checks their forward against their decoder).
    for codec in (ScaleHyperprior(N=8, M=8), Cheng2020AnchorCheckerboard(N=8), Elic2022Official(N=8, M=160)):
        assert forward_is_decoded(codec), type(codec).__name__
    for codec in (JointAutoregressiveHierarchicalPriors(N=8, M=8), Cheng2020Anchor(N=8)):
        assert not forward_is_decoded(codec), type(codec).__name__
        assert not forward_is_decoded(SmoothedCodec(codec, CenterSmoothing(samples=100)))
    cfg = compose_config(
        tmp_path, "model=mbt2018", "model.N=8", "model.M=8", "model.allow_random_init=true",
        "data.val_crop=64", "max_images=1", *SMOOTHING, "certify.enabled=true", "attack=none",
        config_name="attack",
    )  # fmt: skip
    with pytest.raises(ValueError, match=r"certify=true: JointAutoregressiveHierarchicalPriors's forward"):
        evaluate_robustness(cfg)
    assert not any(tmp_path.iterdir())


def test_the_certificate_holds_against_the_deployed_encoder_attacked_with_its_draws(trained_codec, photos):
    """The clean center, the certificate and the attacked center each from their own draws (independent
    seeds), the attack through the deployed encoder knowing its draws: the attacked center stays within
    the bound, or abstains. (On learned codecs the bound sits far above the move: this test alone would
    not see a bound 3x too small; the known-answer test below does.)"""
    smoothing = CenterSmoothing(
        sigma=0.05, samples=100, certify_samples=1000, alpha=0.01, delta=0.3, batch=100, seed=0
    )
    x, eps = photos[0, :, :32, :32], 0.025
    with torch.no_grad():
        clean = smoothing.predict(trained_codec, x, seed=1)
        (certificate,) = smoothing.certify(trained_codec, x, clean["center"], [eps], seed=2)
    assert not clean["abstain"] and not certificate["abstain"]
    checked = 0
    for seed in (3, 4):
        attack = KnownDrawsAttack(SmoothedCodec(trained_codec, smoothing), eps, steps=5)
        x_adv = attack.attack_image(x, clean["center"], eps, seed)
        assert float((x_adv - x).norm()) <= eps + 1e-6
        with torch.no_grad():
            attacked = smoothing.predict(trained_codec, x_adv, seed=seed)
        moved = float((attacked["center"] - clean["center"]).norm())
        print(f"moved {moved:.4f}, bound {certificate['bound_l2']:.4f}, abstained {attacked['abstain']}")
        assert attacked["abstain"] or moved <= certificate["bound_l2"]
        checked += not attacked["abstain"]
    assert checked  # not vacuous: an attacked center passed its check


def test_the_known_draws_attack_assumes_the_seeds_the_encoder_then_draws(trained_codec, photos):
    """Coded as attack.py codes a batch (clean, then attacked: rnic.evaluation.pairs.code_pair), the
    attacked encodes draw exactly the seeds the attack read from the study's stream."""
    from rnic.evaluation.pairs import code_pair

    smoothed = SmoothedCodec(trained_codec, CenterSmoothing(samples=17, alpha=0.1, delta=0.3, seed=5))
    attack = KnownDrawsAttack(smoothed, 0.05, steps=1)
    x = photos[..., :32, :32]
    records, _, _ = code_pair(smoothed, x, attack(x))
    assert [r["smoothing_seed_adv"] for r in records] == attack.assumed_seeds
    assert len(set(attack.assumed_seeds) | {r["smoothing_seed_clean"] for r in records}) == 4


def test_attack_py_attacks_the_deployed_encoder_with_the_draws_it_will_use(tmp_path, trained_checkpoint):
    """attack=known_draws through attack.py moves the delivered reconstruction further from the clean one
    than the same encodes of the unattacked image do; with fresh OS draws it is refused before any image."""
    from rnic.evaluation import evaluate_robustness

    moved = {}
    for attack in ("none", "known_draws"):
        budget = ["attack.eps=0.5", "attack.steps=5"] if attack == "known_draws" else []
        cfg = smoothing_cfg(
            tmp_path / attack, trained_checkpoint, f"attack={attack}", *budget,
            "defense.seed=3", "certify.enabled=true", "certify.eps=[0.5]",
        )  # fmt: skip
        evaluate_robustness(cfg)
        records = json.loads((tmp_path / attack / "results.json").read_text())["images"]
        moved[attack] = [r["psnr_adv_vs_clean"] for r in records]
    assert all(a < b for a, b in zip(moved["known_draws"], moved["none"], strict=True)), moved
    cfg = smoothing_cfg(tmp_path / "fresh", trained_checkpoint, "attack=known_draws")
    with pytest.raises(ValueError, match="draws fresh noise from the OS"):
        evaluate_robustness(cfg)
    assert not (tmp_path / "fresh" / "results.json").exists()


class MeanThreshold(torch.nn.Module):
    """A known answer: reconstructs `value` everywhere where the image's mean exceeds `threshold`, else 0.
    Under N(0, sigma^2 I) noise it outputs `value` with probability 1 - Phi(a), a = (threshold - mean) x
    sqrt(d) / sigma; a perturbation of L2 norm eps along the all-ones direction moves a by eps / sigma."""

    downsampling_factor = 1

    def __init__(self, threshold: float, value: float):
        super().__init__()
        self.threshold, self.value = threshold, value

    def forward(self, x):
        above = (x.mean(dim=(1, 2, 3), keepdim=True) > self.threshold).to(x)
        return {"x_hat": above * self.value * torch.ones_like(x), "likelihoods": {}}


def test_the_certificate_is_exact_where_the_answer_is_known():
    """At x the output is 0 with probability 0.8; a perturbation of eps = 1.2 sigma (the worst direction)
    makes `value` the majority, so the deployed encoder's center jumps by ||value||: exactly the distance
    the quantile at the certified level must reach (the level exceeds 0.8 only because of eps / sigma),
    and the bound is (1 + beta) = 3 times it."""
    from statistics import NormalDist

    sigma, eps, shape = 0.1, 0.12, (3, 4, 4)
    d = math.prod(shape)
    x = torch.full(shape, 0.5)
    codec = MeanThreshold(0.5 + NormalDist().inv_cdf(0.8) * sigma / math.sqrt(d), value=0.25)
    smoothing = CenterSmoothing(
        sigma=sigma, samples=400, certify_samples=2000, alpha=0.01, delta=0.2, batch=400
    )
    jump = 0.25 * math.sqrt(d)
    clean = smoothing.predict(codec, x, seed=1)
    (certificate,) = smoothing.certify(codec, x, clean["center"], [eps], seed=2)
    x_adv = x + eps / math.sqrt(d)  # L2 norm eps along the all-ones direction
    attacked = smoothing.predict(codec, x_adv, seed=3)
    moved = float((attacked["center"] - clean["center"]).norm())
    assert not clean["abstain"] and not attacked["abstain"] and moved == pytest.approx(jump)
    assert certificate["bound_l2"] is not None and moved <= certificate["bound_l2"]
    assert certificate["bound_l2"] == pytest.approx(3 * jump)
