"""APGD, Square and the worst-case ensemble (attack=auto) on a small trained codec, on real bitstreams."""

import inspect

import pytest
import torch
from compressai.entropy_models import EntropyModel
from compressai.models import JointAutoregressiveHierarchicalPriors

import rnic.attacks.proxy
from rnic import rd
from rnic.attacks import APGD, PGD, AutoAttack, Ensemble, Objective, Square, Threat, ThresholdAttack
from rnic.attacks.apgd import NOISE_DRAWS, checkpoints
from rnic.attacks.square import is_autoregressive, p_fraction, real_forward
from rnic.coding import compress_decompress
from rnic.config import build_attacks
from rnic.methods.passes import count_passes
from tests.conftest import compose_config

THREAT_EPS = {"linf": [2 / 255, 6 / 255], "l2": [1.0, 3.0], "mse": [5e-5, 2e-4]}


def real_damage(codec, x, x_adv):
    """MSE between the decoded adversarial and the decoded clean image, per image."""
    return rd.mse(compress_decompress(codec, x_adv)[0], compress_decompress(codec, x)[0])


@pytest.mark.parametrize("threat", ["linf", "l2", "mse"])
def test_apgd_stays_inside_every_threat_per_image(trained_codec, photos, threat):
    x = photos[..., :128, :128]
    noise = torch.rand(x.shape, generator=torch.Generator().manual_seed(0))
    eps = torch.tensor(THREAT_EPS[threat])
    model = Threat(threat)
    for images in (x, noise):  # natural and random images, with per-image budgets
        attack = APGD(trained_codec, threat=threat, eps=eps, steps=6)
        x_adv = attack(images)
        assert model.contains(images, x_adv, eps.view(-1, 1, 1, 1)).all()
        assert attack.gradient_evaluations == 6
    # The larger budget is used: each image is bounded by its own budget, not the batch's smallest.
    delta = (x_adv - noise).flatten(1)
    size = {"linf": delta.abs().amax(1), "l2": delta.norm(dim=1), "mse": delta.square().mean(1)}[threat]
    assert size[1] > eps[0]


def test_apgd_noise_proxy_averages_draws(trained_codec, photos):
    attack = APGD(trained_codec, steps=3, proxy="noise")
    x_adv = attack(photos[..., :128, :128])
    assert attack.gradient_evaluations == 3 * NOISE_DRAWS
    assert (x_adv - photos[..., :128, :128]).abs().max() <= 4 / 255 + 1e-6


@pytest.mark.parametrize("threat", ["linf", "mse"])
def test_apgd_beats_pgd_with_the_same_gradient_evaluations(trained_codec, photos, threat):
    # Measured on this codec (real bitstreams, 10 gradient evaluations, seeds 0 and 1): APGD's damage
    # is 1.2 to 1.6 times PGD's (Madry's step 2.5 eps / steps) under the ste proxy.
    apgd = APGD(trained_codec, threat=threat, steps=10, proxy="ste")
    pgd = PGD(trained_codec, threat=threat, steps=10, proxy="ste")
    x_apgd, x_pgd = apgd(photos), pgd(photos)
    assert apgd.gradient_evaluations == pgd.steps
    assert (
        real_damage(trained_codec, photos, x_apgd) > 1.1 * real_damage(trained_codec, photos, x_pgd)
    ).all()


def test_apgd_checkpoints_follow_croce_and_hein():
    # p0 = 0, p1 = 0.22, p(j+1) = p(j) + max(p(j) - p(j-1) - 0.03, 0.06) of 100 iterations.
    assert checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    assert checkpoints(1) == [1]


@pytest.mark.parametrize("attack", ["apgd", "square"])
def test_a_batch_gives_each_image_what_it_gets_alone(trained_codec, photos, attack):
    x = photos[..., :128, :128]
    make = {
        "apgd": lambda: APGD(trained_codec, threat="mse", steps=4, proxy="noise", seed=3),
        "square": lambda: Square(trained_codec, threat="l2", eps=2.0, queries=20, seed=3),
    }[attack]
    batch = make()(x)
    for i in range(x.shape[0]):
        torch.testing.assert_close(make()(x[i : i + 1])[0], batch[i], atol=1e-5, rtol=0)


def test_square_climbs_the_real_objective_without_any_proxy(trained_codec, photos, monkeypatch):
    def no_proxy(*args, **kwargs):
        raise AssertionError("a quantisation proxy was installed")

    monkeypatch.setattr(rnic.attacks.proxy, "_proxied_quantize", no_proxy)
    calls = []

    def real_rounding_only(module, inputs):  # before every entropy model call
        assert "quantize" not in vars(module) and not module.training
        calls.append(type(module).__name__)

    models = [m for m in trained_codec.modules() if isinstance(m, EntropyModel)]
    hooks = [m.register_forward_pre_hook(real_rounding_only) for m in models]
    try:
        attack = Square(trained_codec, threat="linf", queries=30, objective=Objective(reference="clean"))
        x_adv = attack(photos)
    finally:
        for hook in hooks:
            hook.remove()
    assert len(calls) >= 31 * len(models)

    history = attack.history
    assert history.shape == (30, 2)
    assert (history[1:] >= history[:-1]).all()  # never worse after a query
    assert (history[-1] > history[0]).all()  # and it does climb
    # What it climbed is the objective on the real bitstream: decoded vs decoded clean.
    torch.testing.assert_close(real_damage(trained_codec, photos, x_adv), history[-1], rtol=1e-4, atol=1e-7)
    assert (x_adv - photos).abs().max() <= 4 / 255 + 1e-6


@pytest.mark.parametrize("threat", ["l2", "mse"])
def test_square_l2_versions_stay_inside(trained_codec, photos, threat):
    x = photos[..., :128, :128]
    eps = torch.tensor(THREAT_EPS[threat])
    attack = Square(trained_codec, threat=threat, eps=eps, queries=15)
    x_adv = attack(x)
    assert Threat(threat).contains(x, x_adv, eps.view(-1, 1, 1, 1)).all()
    assert (attack.history[1:] >= attack.history[:-1]).all()


def test_square_decodes_autoregressive_codecs():
    codec = JointAutoregressiveHierarchicalPriors(N=8, M=8).eval()
    codec.update(force=True)
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    assert is_autoregressive(codec)
    x_hat, likelihoods, pixels = real_forward(codec, x)
    decoded, bpp = compress_decompress(codec, x)
    assert torch.equal(x_hat, decoded)
    torch.testing.assert_close(rd.estimated_bpp(likelihoods, pixels), bpp.float(), rtol=1e-4, atol=0)
    attack = Square(codec, queries=3, objective=Objective(kind="rate"))
    attack(x)
    assert (attack.history[-1] >= bpp.float() - 1e-4).all()


def test_p_schedule_halves_at_the_papers_fractions():
    assert p_fraction(0.05, 0, 10000) == 0.05
    assert p_fraction(0.05, 11, 10000) == 0.025
    assert p_fraction(0.05, 9999, 10000) == 0.05 / 512
    assert p_fraction(0.05, 5, 100) == 0.05 / 8  # rescaled: query 5 of 100 is query 500 of 10000


@pytest.mark.parametrize("select", ["psnr", "vi"])
def test_auto_keeps_each_images_worst_member(trained_codec, photos, select):
    x = photos[..., :128, :128]
    auto = AutoAttack(trained_codec, threat="linf", steps=3, queries=8, select=select, seed=5)
    x_auto = auto(x)
    report = auto.last_report
    assert list(report["members"]) == [
        "pgd", "apgd-skip-clean", "apgd-skip-source", "apgd-ste-clean", "apgd-ste-source",
        "apgd-noise-clean", "apgd-noise-source", "square",
    ]  # fmt: skip
    assert report["skipped"] == {}

    clean_hat = compress_decompress(trained_codec, x)[0]
    alone = {}
    for k, (name, member) in enumerate(auto.members.items()):  # each member alone, its own seed
        x_adv = member(x, seed=5 + k)
        x_hat = compress_decompress(trained_codec, x_adv)[0]
        alone[name] = (x_adv, rd.psnr(x_hat, x), rd.vulnerability_index(x_hat, clean_hat, x_adv, x))
        torch.testing.assert_close(torch.tensor(report["members"][name]["psnr_adv"]), alone[name][1])
    for i in range(x.shape[0]):
        if select == "psnr":
            worst = min(alone, key=lambda n: float(alone[n][1][i]))
            assert report["psnr_adv"][i] == pytest.approx(min(float(a[1][i]) for a in alone.values()))
        else:
            worst = max(alone, key=lambda n: float(alone[n][2][i]))
            assert report["vi"][i] == pytest.approx(max(float(a[2][i]) for a in alone.values()))
        assert report["winner"][i] == worst
        assert torch.equal(x_auto[i], alone[worst][0][i])
        assert auto.image_report(i)["winner"] == worst
    assert Threat("linf").contains(x, x_auto, torch.full((2, 1, 1, 1), 4 / 255)).all()
    # Its first member is PGD as `attack=linf`-style PGD runs alone at the same seed: never weaker than it.
    assert torch.equal(alone["pgd"][0], PGD(trained_codec, threat="linf", eps=4 / 255, seed=5)(x))


def test_ensemble_skips_a_member_that_cannot_run(trained_codec, photos):
    x = photos[..., :128, :128]
    rounding = PGD(trained_codec, steps=2, proxy="none")  # the real rounding: zero gradient
    square = Square(trained_codec, queries=3)
    ensemble = Ensemble(trained_codec, {"pgd-none": rounding, "square": square})
    with pytest.warns(UserWarning, match="member pgd-none cannot run on this codec"):
        x_adv = ensemble(x)
    assert set(ensemble.last_report["skipped"]) == {"pgd-none"}
    assert ensemble.last_report["winner"] == ["square", "square"]
    assert torch.equal(x_adv, square(x, seed=1))  # the second member: seed + 1
    assert "pgd-none" not in ensemble.last_report["members"]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda c: APGD(c, threat="l1"), "attack.threat='l1' is unknown"),
        (lambda c: APGD(c, eps=0), "attack.eps=0 must be > 0"),
        (lambda c: APGD(c, threat="mse", eps=-1e-4), "attack.eps=-0.0001 must be > 0"),
        (lambda c: APGD(c, eps=2.0), "attack.eps=2.0 is larger than the image allows"),
        (lambda c: APGD(c, steps=0), "attack.steps=0 must be >= 1"),
        (lambda c: Square(c, queries=0), "attack.queries=0 must be >= 1"),
        (lambda c: Square(c, threat="l3"), "attack.threat='l3' is unknown"),
        (lambda c: Square(c, proxy="skip"), "attack.proxy='skip': Square queries the codec's real rounding"),
        (lambda c: PGD(c, threat="l1"), "attack.threat='l1' is unknown"),
        (lambda c: AutoAttack(c, threat="linf2"), "attack.threat='linf2' is unknown"),
        (lambda c: AutoAttack(c, eps=-1), "attack.eps=-1 must be > 0"),
        (lambda c: AutoAttack(c, queries=0), "attack.queries=0 must be >= 1"),
        (lambda c: AutoAttack(c, select="ssim"), "attack.select='ssim' is unknown"),
        (lambda c: AutoAttack(c, proxy="skip"), "attack.proxy='skip': attack=auto runs APGD"),
        (lambda c: AutoAttack(c, objective=Objective(kind="rate")), "attack.objective.kind='rate'"),
    ],
)
def test_bad_settings_are_named(trained_codec, make, message):
    with pytest.raises(ValueError, match=message.replace(".", r"\.").replace("(", r"\(")):
        make(trained_codec)


def test_an_l2_radius_beyond_the_image_is_named_at_the_call(trained_codec):
    x = torch.rand(1, 3, 16, 16)
    for attack in (APGD(trained_codec, threat="l2", eps=30.0), Square(trained_codec, threat="l2", eps=30.0)):
        with pytest.raises(ValueError, match=r"attack\.eps=.*larger than the image allows.*27\.71"):
            attack(x)


@pytest.mark.parametrize("name", ["apgd", "square", "auto"])
def test_configs_build_with_the_threats_default_budget(tmp_path, trained_codec, name):
    cfg = compose_config(tmp_path, f"attack={name}", "attack.threat=mse", config_name="attack")
    (attack,) = build_attacks(cfg.attack, trained_codec)
    assert attack.threat == "mse" and attack.eps == 1e-4
    assert "threat='mse'" in repr(attack) and "eps=0.0001" in repr(attack)
    assert attack.round_8bit is True


def test_square_averages_the_draws_of_a_random_defense(trained_codec, photos):
    """Behind a random defense each Square oracle call (and its clean reference) averages `eot_samples`
    draws: a single lucky draw cannot pass for an improvement."""
    from rnic.defenses import DefendedCodec, Noise

    defended = DefendedCodec(trained_codec, [Noise(0.02)], eot_samples=3)
    calls = []
    handle = trained_codec.register_forward_hook(lambda *args: calls.append(1))
    try:
        Square(defended, threat="linf", eps=4 / 255, queries=5, seed=0)(photos[..., :64, :64])
    finally:
        handle.remove()
    # The objective's context (one forward), Square's clean reference and 5 queries, 3 draws each.
    assert len(calls) == 1 + 3 + 5 * 3


def codec_work(codec, attack, x) -> float:
    """The codec work of `attack` on `x`, in forwards: a pass (a forward a backward runs through) costs
    about three, a forward alone one; coding counts through the analysis transform."""
    with count_passes([codec], x.shape[0], parts=[codec.g_a]) as count:
        attack(x)
    return 3 * count.passes + count.forwards


def test_auto_at_its_defaults_does_about_twice_the_recipes_codec_work(trained_codec, photos):
    # The bound is 3x the recipe's wall time; wall time adds to the codec work (coding, Square's
    # per-query overhead): 2.5x the recipe's work took 3.75x its time on the shipped quality 1 at
    # 256px, so the work must stay near 2x. The defaults' ratio (APGD steps : Square queries : Adam
    # steps) at a tenth of their size.
    defaults = inspect.signature(AutoAttack).parameters
    steps, queries = defaults["steps"].default // 10, defaults["queries"].default // 10
    recipe_steps = inspect.signature(ThresholdAttack).parameters["steps"].default // 10
    x = photos[:1, :, :64, :64]
    auto = AutoAttack(trained_codec, threat="mse", steps=steps, queries=queries)
    recipe = ThresholdAttack(trained_codec, eps=1e-4, steps=recipe_steps)
    assert auto.adam_steps == recipe_steps  # its threshold member is the recipe's length
    assert codec_work(trained_codec, auto, x) <= 2.2 * codec_work(trained_codec, recipe, x)
