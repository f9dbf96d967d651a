"""Every attack on a trained small codec: budgets, strength against noise, determinism, guards."""

import warnings

import pytest
import torch

from rnic import rd
from rnic.attacks import PGD, NoAttack, Objective, ThresholdAttack, ZeroGradientError
from rnic.attacks.objectives import Context
from rnic.attacks.threat import l2_norm
from rnic.codecs import build_codec
from rnic.coding import compress_decompress

LINF = 4 / 255


def attacks(codec):
    return {
        "linf": PGD(codec, threat="linf", eps=LINF, alpha=1 / 255, steps=10),
        "l2": PGD(codec, threat="l2", eps=1.5, alpha=0.4, steps=10),
        "threshold": ThresholdAttack(codec, eps=1e-4, steps=40, lr=0.01, select="best"),
    }


def noise_like(x, name, attack):
    """Uniform noise with the same budget as the attack."""
    generator = torch.Generator().manual_seed(1)
    u = torch.rand(x.shape, generator=generator) * 2 - 1
    if name == "linf":
        return (x + LINF * u).clamp(0, 1)
    if name == "l2":
        return (x + u * attack.eps / l2_norm(u) * 0.999).clamp(0, 1)
    return (x + u * (3 * attack.eps) ** 0.5).clamp(0, 1)  # MSE of U(-a, a) is a^2 / 3


@pytest.mark.parametrize("name", ["linf", "l2", "threshold"])
def test_budget_holds_and_the_attack_beats_noise(trained_codec, photos, name):
    attack = attacks(trained_codec)[name]
    x_adv = attack(photos)

    assert x_adv.shape == photos.shape and x_adv.min() >= 0 and x_adv.max() <= 1
    if name == "linf":
        assert (x_adv - photos).abs().max() <= LINF + 1e-6
    elif name == "l2":
        assert (l2_norm(x_adv - photos) <= attack.eps).all()
    else:
        assert (rd.mse(x_adv, photos) <= attack.eps).all()
    assert all(p.grad is None for p in trained_codec.parameters())

    clean = compress_decompress(trained_codec, photos)[0]
    attacked = compress_decompress(trained_codec, x_adv)[0]
    noisy = compress_decompress(trained_codec, noise_like(photos, name, attack))[0]
    assert (rd.mse(attacked, clean) > 2 * rd.mse(noisy, clean)).all()


def test_per_image_budgets(trained_codec, photos):
    eps = torch.tensor([1 / 255, 6 / 255])
    x_adv = PGD(trained_codec, eps=eps, alpha=1 / 255, steps=3)(photos)
    linf = (x_adv - photos).flatten(1).abs().amax(1)
    assert (linf <= eps + 1e-6).all() and linf[1] > eps[0] + 1e-6


def test_8bit_delivery_keeps_the_budget_and_the_grid(trained_codec, photos):
    x = torch.round(photos * 255) / 255
    x_adv = ThresholdAttack(trained_codec, eps=1e-4, steps=10, select="best", round_8bit=True)(x)
    assert torch.equal(torch.round(x_adv * 255) / 255, x_adv)
    assert (rd.mse(x_adv, x) <= 1e-4).all()


def test_same_seed_same_result(trained_codec, photos):
    first = PGD(trained_codec, eps=LINF, steps=3, seed=7)(photos)
    again = PGD(trained_codec, eps=LINF, steps=3, seed=7)(photos)
    other = PGD(trained_codec, eps=LINF, steps=3, seed=8)(photos)
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_eval_mode_rounding_is_caught(trained_codec, photos):
    with pytest.raises(ZeroGradientError, match="proxy='none'"):
        PGD(trained_codec, eps=LINF, steps=2, proxy="none")(photos)


def test_a_stationary_start_is_caught(trained_codec, photos):
    # With straight-through rounding, the reconstruction equals the clean one until a latent
    # flips: the distortion against the clean reconstruction has zero gradient at the source.
    with pytest.raises(ZeroGradientError, match="random_start"):
        PGD(trained_codec, eps=LINF, steps=2, random_start=False, proxy="ste")(photos)


def test_a_codec_that_ignores_its_input_is_caught(photos):
    codec = build_codec("bmshj2018_hyperprior", N=8, M=8).eval()
    last = codec.g_s[-1]  # the synthesis's last layer
    torch.nn.init.zeros_(last.weight)
    torch.nn.init.constant_(last.bias, 0.5)  # every reconstruction a flat grey
    with pytest.raises(ZeroGradientError, match="ignores its"):
        PGD(codec, eps=LINF, steps=2, proxy="skip")(photos)


@pytest.mark.parametrize("proxy", ["noise", "ste"])
def test_other_proxies_attack_too(trained_codec, photos, proxy):
    x_adv = PGD(trained_codec, eps=LINF, alpha=1 / 255, steps=5, proxy=proxy)(photos)
    clean = compress_decompress(trained_codec, photos)[0]
    assert (
        rd.mse(compress_decompress(trained_codec, x_adv)[0], clean)
        > rd.mse(compress_decompress(trained_codec, photos)[0], clean)
    ).all()


def test_targeted_attack_moves_the_reconstruction_toward_the_target(trained_codec, photos):
    target = photos.flip(0)  # each image's target is the other photo
    mask = torch.zeros(1, 1, 192, 192)
    mask[..., 64:128, 64:128] = 1
    objective = Objective(kind="targeted")
    x_adv = PGD(trained_codec, eps=16 / 255, alpha=2 / 255, steps=15, objective=objective)(
        photos, target, mask
    )
    before = rd.mse(compress_decompress(trained_codec, photos)[0] * mask, target * mask)
    after = rd.mse(compress_decompress(trained_codec, x_adv)[0] * mask, target * mask)
    assert (after < 0.8 * before).all()


def test_rate_attack_raises_the_real_bitrate(trained_codec, photos):
    attack = PGD(trained_codec, eps=LINF, alpha=1 / 255, steps=10, objective=Objective(kind="rate"))
    bpp_attacked = compress_decompress(trained_codec, attack(photos))[1]
    bpp_noise = compress_decompress(trained_codec, noise_like(photos, "linf", attack))[1]
    assert (bpp_attacked > 1.05 * bpp_noise).all()


@pytest.mark.parametrize("reference", ["source", "input"])
def test_rd_and_reference_variants_run_within_budget(trained_codec, photos, reference):
    objective = Objective(kind="rd", reference=reference, lmbda=0.01)
    x_adv = PGD(trained_codec, eps=LINF, steps=2, objective=objective)(photos)
    assert (x_adv - photos).abs().max() <= LINF + 1e-6


def test_ms_ssim_objective_and_input_metric(trained_codec, photos):
    objective = Objective(distortion="ms-ssim")
    attack = ThresholdAttack(trained_codec, eps=0.01, input_metric="ms-ssim", steps=5, objective=objective,
                             select="best")  # fmt: skip
    x_adv = attack(photos)
    assert (1 - rd.ms_ssim(x_adv, photos) <= 0.01).all()


def test_no_attack_is_the_identity(trained_codec, photos):
    assert torch.equal(NoAttack(trained_codec)(photos), photos)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda c: PGD(c, eps=0), "attack.eps=0 must be > 0"),
        (lambda c: PGD(c, eps=-1 / 255), "must be > 0"),
        (lambda c: PGD(c, steps=0), "attack.steps=0 must be >= 1"),
        (lambda c: PGD(c, threat="l1"), "attack.threat='l1' is unknown"),
        (lambda c: PGD(c, proxy="round"), "attack.proxy='round' is unknown"),
        (lambda c: ThresholdAttack(c, restarts=0), "attack.restarts=0"),
        (lambda c: Objective(kind="psnr"), "attack.objective.kind='psnr' is unknown"),
        (lambda c: Objective(kind="rd"), "attack.objective.lmbda=None must be > 0"),
    ],
)
def test_bad_settings_are_named(trained_codec, make, message):
    with pytest.raises(ValueError, match=message.replace(".", r"\.").replace("(", r"\(")):
        make(trained_codec)


def test_a_target_of_another_size_is_refused(trained_codec, photos):
    with pytest.raises(ValueError, match="attack target is"):
        PGD(trained_codec, objective=Objective(kind="targeted"))(photos, target=photos[:, :, :64, :64])


class _PaperLowBound(torch.autograd.Function):  # Chen & Ma's utils/ops.py Low_bound, transcribed
    @staticmethod
    def forward(ctx, x, bound):
        ctx.save_for_backward(x)
        ctx.bound = bound
        return torch.clamp(x, min=bound)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * ((x >= ctx.bound) | (g < 0)).float(), None


class _PaperUpBound(torch.autograd.Function):  # ... and Up_bound
    @staticmethod
    def forward(ctx, x, bound):
        ctx.save_for_backward(x)
        ctx.bound = bound
        return torch.clamp(x, max=bound)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * ((x <= ctx.bound) | (g > 0)).float(), None


def paper_attack(codec, image, steps, eps=1e-4, box=16 / 255, lr=0.01):
    """attack_fgsm of Chen & Ma's public code (attack_rd.py), line by line, for one image; gradients by
    autograd.grad instead of backward() so that the codec's parameters stay untouched."""
    with torch.no_grad():
        output_s = codec(image)["x_hat"].clamp(0, 1)
    noise = torch.zeros_like(image).requires_grad_(True)
    optimizer = torch.optim.Adam([noise], lr=lr)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, [1, 2, 3], gamma=0.33)
    for i in range(steps):
        clipped = _PaperUpBound.apply(_PaperLowBound.apply(noise, -box), box)
        im_in = _PaperUpBound.apply(_PaperLowBound.apply(image + clipped, 0.0), 1.0)
        loss_i = torch.mean((image - im_in) ** 2)
        if loss_i > eps:
            loss = loss_i
        else:
            output = codec.g_s(codec.g_a(im_in))
            output = _PaperUpBound.apply(_PaperLowBound.apply(output, 0.0), 1.0)  # what the decoder delivers
            loss = 1.0 - torch.mean((output_s - output) ** 2)
        optimizer.zero_grad()
        (noise.grad,) = torch.autograd.grad(loss, noise)
        optimizer.step()
        if i % (steps // 3) == 0:
            scheduler.step()
    return (torch.round(im_in.detach() * 255) / 255).clamp(0, 1)  # eval(): the last iterate, 8-bit


def test_objectives_measure_the_delivered_reconstruction():
    """The decoder delivers x_hat clamped to [0, 1]: an objective must not score what the clamp removes."""
    x = torch.full((1, 3, 8, 8), 0.5)
    raw = torch.full_like(x, 1.5)  # 1.0 once delivered
    likelihoods = {"y": torch.full((1, 2, 2, 2), 0.5)}
    ctx = Context(source=x, clean=torch.full_like(x, 0.5), target=torch.full_like(x, 1.0))
    for kind, reference in (("distortion", "clean"), ("distortion", "source"), ("targeted", "clean")):
        objective = Objective(kind=kind, reference=reference)
        value = objective(raw, likelihoods, 64, x, ctx)
        assert torch.allclose(value, objective(raw.clamp(0, 1), likelihoods, 64, x, ctx)), (kind, reference)


def test_the_threshold_attack_is_the_papers_code(trained_codec, photos):
    """rnic's default threshold attack against an independent transcription of the paper's loop: the
    same VI on real bitstreams (the final 8-bit rounding done the paper's way for both)."""
    x = torch.round(photos * 255) / 255
    ours = ThresholdAttack(trained_codec, eps=1e-4, steps=60, round_8bit=False)(x)
    ours = (torch.round(ours * 255) / 255).clamp(0, 1)
    theirs = torch.cat([paper_attack(trained_codec.eval(), x[i : i + 1], steps=60) for i in range(len(x))])
    clean = compress_decompress(trained_codec, x)[0]
    vi = [
        rd.vulnerability_index(compress_decompress(trained_codec, adv)[0], clean, adv, x)
        for adv in (ours, theirs)
    ]
    assert torch.allclose(vi[0], vi[1], atol=0.05), vi
    assert (vi[0] > 0).all()
    # The paper's schedule: the full rate for the first step only.
    from rnic.attacks.threshold import paper_lr

    assert [round(paper_lr(0.01, i, 60) / 0.01, 6) for i in (0, 1, 20, 21, 40, 41, 59)] == [
        1.0, 0.33, 0.33, 0.1089, 0.1089, 0.035937, 0.035937,
    ]  # fmt: skip


def test_the_recipes_zero_start_that_cannot_move_is_reported(trained_codec, photos):
    # A codec that rounds inside its forward reproduces the clean reconstruction at the recipe's zero
    # start: the distortion against it is flat there, Adam never moves, and the source comes back.
    x = torch.round(photos[:, :, :64, :64] * 255) / 255
    elic = build_codec("elic", N=16, M=32, groups=[4, 4, 8, 16]).eval()
    elic.update(force=True)
    with pytest.warns(UserWarning, match="zero at the zero start for 2 image"):
        assert torch.equal(ThresholdAttack(elic, eps=1e-4, steps=3)(x), x)
    with warnings.catch_warnings():  # the hyperprior's skipped rounding: a gradient, no warning
        warnings.simplefilter("error")
        assert not torch.equal(ThresholdAttack(trained_codec, eps=1e-4, steps=3)(x), x)
    with pytest.raises(ZeroGradientError, match="torch.round"):  # rounding kept: not a recipe's result
        ThresholdAttack(trained_codec, eps=1e-4, steps=3, proxy="none")(x)
