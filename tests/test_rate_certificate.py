"""The rate certificate (certify.rate=true): percentile smoothing of the noise encoder's real stream length.
It is exact where the answer is known, and no rate attack through the deployed encoder within the radius
pushes the rate's median past the bound."""

from __future__ import annotations

import json
import math
from statistics import NormalDist

import pytest
import torch

from rnic.attacks import APGD, Objective
from rnic.coding import compress_decompress
from rnic.defenses import defended
from rnic.rate_certificate import RateCertificate, order_index, upper_level
from tests.conftest import compose_config


def noise_encoder(codec, sigma: float, eot_samples: int = 8):
    """The deployed randomised encoder: `defense=noise` in front of `codec`."""
    noise = {"noise": {"_target_": "rnic.defenses.Noise", "sigma": sigma}}
    return defended(codec, noise, eot_samples=eot_samples).eval()


class MeanThresholdStream(torch.nn.Module):
    """A known answer: a stream of `high` bytes where the image's mean exceeds `threshold`, else `low`.
    Under N(0, sigma^2 I) noise the stream is long with probability 1 - Phi(a), a = (threshold - mean)
    sqrt(d) / sigma; a perturbation of L2 norm eps along the all-ones direction lowers a by eps / sigma."""

    downsampling_factor = 1

    def __init__(self, threshold: float, low: int, high: int):
        super().__init__()
        self.threshold, self.low, self.high = threshold, low, high

    def compress(self, x):
        above = x.mean(dim=(1, 2, 3)) > self.threshold
        return {"strings": [[bytes(self.high if a else self.low) for a in above]], "shape": x.shape[-2:]}


def test_the_order_statistic_and_the_level_follow_the_binomial_and_the_normal():
    assert upper_level(0.5, 0.0, 0.1) == pytest.approx(0.5)
    assert upper_level(0.5, 0.1, 0.1) == pytest.approx(0.841345, abs=1e-6)  # Phi(1)
    assert order_index(100, 0.5, 0.05) == 59  # P(Bin(100, 1/2) <= 58) = 0.9557, <= 57: 0.9334
    assert order_index(18, 0.8413, 0.05) == 18 and order_index(17, 0.8413, 0.05) is None  # 1 - q^n < 0.95
    assert order_index(50, 1.0, 0.05) is None


def test_the_bound_holds_at_the_worst_perturbation_where_the_answer_is_known():
    """At x the stream is short with probability Phi(a), just under q_up = Phi(eps / sigma); the worst
    perturbation of norm eps (along the all-ones direction) makes the long stream the median. Over 200
    independent certifications the bound must be the long stream in all but about alpha of them (the
    order statistic's confidence); a bound without eps / sigma, or without the confidence, fails often."""
    sigma, eps, alpha, shape = 0.1, 0.1, 0.05, (3, 4, 4)
    d = math.prod(shape)
    a = eps / sigma - 0.1  # at x' = x + eps / sqrt(d): a' = -0.1, the long stream is the median
    encoder = noise_encoder(MeanThresholdStream(0.5 + a * sigma / math.sqrt(d), low=10, high=20), sigma)
    certificate = RateCertificate(quantile=0.5, samples=100, alpha=alpha, seed=0)
    x = torch.full(shape, 0.5)
    high_bpp = 8 * 20 / (4 * 4)
    worst = RateCertificate(samples=1000, batch=1000).rates(encoder, x + eps / math.sqrt(d), seed=10**9)
    assert certificate.percentile(worst) == high_bpp  # the perturbation does push the median up
    assert NormalDist().cdf(-0.1) < 0.5  # (in truth: the short stream's probability at x')
    failures = 0
    for _ in range(200):
        (entry,) = certificate.certify(encoder, x, [eps], seed=certificate.draw_seed())
        assert not entry["abstain"] and entry["bpp_clean"] == 8 * 10 / 16  # the clean median: short
        failures += entry["bpp_bound"] < high_bpp
    print(f"{failures} of 200 certifications below the worst median")
    assert failures <= 20, failures  # alpha * 200 = 10 expected at most


def test_the_sampled_rates_are_the_deployed_encoders_streams(trained_codec, photos):
    """Draw i of the certificate is the very stream the deployed encoder sends when its noise starts
    from seed + i (its header included)."""
    encoder = noise_encoder(trained_codec, 0.05)
    certificate = RateCertificate(samples=1)
    x = photos[:1, :, :32, :32]
    for i in range(3):
        torch.manual_seed(5 + i)
        seed = int(torch.randint(0, 2**62, ()))  # what rng.image_generators draws next
        sampled = certificate.rates(encoder, x[0], seed=seed)[0]
        torch.manual_seed(5 + i)
        _, bpp = compress_decompress(encoder, x)
        assert float(bpp[0]) == float(sampled)


def test_no_rate_attack_through_the_deployed_encoder_exceeds_the_bound(trained_codec):
    """APGD on the estimated bits (attack.objective.kind=rate), white-box with EOT over the encoder's
    noise, at eps = 2 sigma on a flat grey image (where the rate is most sensitive): the attack raises the
    median rate (real streams, fresh draws at x') by a word, yet never past the certified bound."""
    sigma, eps = 0.05, 0.1
    encoder = noise_encoder(trained_codec, sigma, eot_samples=8)
    certificate = RateCertificate(quantile=0.5, samples=150, alpha=0.05, batch=75)
    x = torch.full((1, 3, 32, 32), 0.45)
    (entry,) = certificate.certify(encoder, x[0], [eps], seed=1)
    attack = APGD(encoder, eps=eps, threat="l2", steps=10, objective=Objective(kind="rate"))
    x_adv = attack(x)
    assert float((x_adv - x).norm()) <= eps + 1e-6
    attacked = certificate.percentile(certificate.rates(encoder, x_adv[0], seed=2))
    print(f"median at x {entry['bpp_clean']}, attacked {attacked}, bound {entry['bpp_bound']}")
    assert attacked > entry["bpp_clean"]  # not vacuous: the bound is within the attack's reach
    assert not entry["abstain"] and attacked <= entry["bpp_bound"]


def test_certify_rate_runs_end_to_end_and_refuses_other_encoders(tmp_path, trained_checkpoint, capsys):
    """The records, the means in results.json and the card, the CSV, the printed table and the report's
    figure; bad settings refused before anything is written."""
    from rnic.evaluation import evaluate_robustness
    from rnic.evaluation.checks import check_card
    from rnic.report.page import build_report

    def cfg(*overrides):
        return compose_config(
            tmp_path, "model=bmshj2018_hyperprior", "model.N=32", "model.M=48",
            f"model.weights={trained_checkpoint}", "data.val_crop=64", "max_images=1", "certify.rate=true",
            "certify.rate_samples=20", "certify.eps=[0.01,0.1]", *overrides, config_name="attack",
        )  # fmt: skip

    for overrides, message in (
        (["attack=none"], r"certify\.rate=true needs defense=noise"),
        (["defense=noise", "certify.rate_quantile=1"], r"certify\.rate_quantile=1 must be in \(0, 1\)"),
        (["defense=noise", "attack=apgd", "attack.threat=linf"], r"attack\.threat=linf"),
    ):
        with pytest.raises(ValueError, match=message):
            evaluate_robustness(cfg(*overrides))
        assert not any(tmp_path.iterdir())
    attack = [
        "attack=apgd",
        "attack.threat=l2",
        "attack.eps=0.01",
        "attack.steps=2",
        "attack_run.eot_samples=2",
    ]
    evaluate_robustness(cfg("defense=noise", "defense.noise.sigma=0.05", *attack, "attack.round_8bit=false"))
    results = json.loads((tmp_path / "results.json").read_text())
    (record,) = results["images"]
    small, large = record["certified_rate"]
    assert not small["abstain"] and small["bpp_bound"] >= small["bpp_clean"] > 0
    assert large["abstain"] and large["bpp_bound"] is None  # eps = 2 sigma needs >= 131 draws
    assert results["certified_rate"][0]["bpp_bound"] == small["bpp_bound"] and check_card(tmp_path) == []
    assert "bpp_bound@0.01" in (tmp_path / "results.csv").read_text().splitlines()[0]
    assert "certified rate (noise)" in capsys.readouterr().out
    build_report([tmp_path], tmp_path.parent / "report")
    assert (tmp_path.parent / "report" / "certified_rate.png").is_file()
