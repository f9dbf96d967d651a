"""Threat models: exact projections, membership, per-image budgets, random starts, bad budgets."""

import pytest
import torch

from rnic.attacks import rng
from rnic.attacks.threat import DEFAULT_EPS, MSE_BOX, THREATS, Threat, l2_norm

SHAPE = (3, 8, 8)
N = 3 * 8 * 8


def sources(batch=4, seed=0):
    """Images with samples at 0 and 1 too, where the range binds."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, *SHAPE, generator=g)
    x[:, 0, :2] = 0.0
    x[:, 1, :2] = 1.0
    return x


def far_points(x, scale, seed=1):
    g = torch.Generator().manual_seed(seed)
    return x + scale * torch.randn(x.shape, generator=g)


def eps_of(name, batch):
    """Different budgets per image."""
    base = {"linf": 4 / 255, "l2": 1.0, "mse": 1e-3}[name]
    return (base * torch.linspace(0.5, 2.0, batch)).view(-1, 1, 1, 1)


def dykstra(v, radius, lo, hi, iterations=5000):
    """Projection onto ball ∩ box by Dykstra's alternating projections (float64), an independent check."""
    x, p, q = v.clone(), torch.zeros_like(v), torch.zeros_like(v)
    for _ in range(iterations):
        y = torch.maximum(torch.minimum(x + p, hi), lo)
        p = x + p - y
        z = y + q
        x = z * torch.clamp(radius / l2_norm(z), max=1.0)
        q = z - x
    return x


@pytest.mark.parametrize("name", ["l2", "mse"])
@pytest.mark.parametrize("scale", [0.02, 0.3, 3.0])
def test_ball_projection_is_the_nearest_admissible_point(name, scale):
    threat = Threat(name)
    x = sources().double()
    eps = eps_of(name, 4).double()
    v = far_points(x, scale).double()
    p = threat.project(x, v, eps)
    assert threat.contains(x, p, eps).all()

    # Dykstra's algorithm converges to the same point.
    lo, hi = threat.bounds(x, eps)
    reference = x + dykstra(v - x, threat.radius(x, eps), lo, hi)
    assert torch.allclose(p, reference, atol=1e-5)

    # Optimality: <v - p, c - p> <= 0 for admissible c (points of the box scaled into the ball).
    g = torch.Generator().manual_seed(3)
    for _ in range(20):
        c = torch.maximum(torch.minimum(torch.randn(x.shape, generator=g, dtype=x.dtype), hi), lo)
        c = x + c * torch.clamp(threat.radius(x, eps) / l2_norm(c), max=1.0) * torch.rand(
            4, 1, 1, 1, generator=g
        )
        assert ((v - p) * (c - p)).flatten(1).sum(1).max() <= 1e-6


@pytest.mark.parametrize("name", THREATS)
def test_projection_holds_every_bound_per_image_in_float32(name):
    threat = Threat(name)
    x = sources(batch=6)
    eps = eps_of(name, 6)
    for scale in (0.01, 0.1, 1.0, 10.0):
        p = threat.project(x, far_points(x, scale), eps)
        delta = (p - x).flatten(1)
        assert p.min() >= 0 and p.max() <= 1
        if name == "linf":
            assert (delta.abs().amax(1) <= eps.flatten() + 1e-6).all()
        elif name == "l2":
            assert (delta.norm(dim=1) <= eps.flatten()).all()  # exactly: radii are aimed a hair inside
        else:
            assert (delta.square().mean(1) <= eps.flatten()).all()
            assert (delta.abs().amax(1) <= MSE_BOX + 1e-6).all()
        assert threat.contains(x, p, eps).all()
    # Far away, each image's own budget binds (not the batch's smallest or largest).
    p = threat.project(x, far_points(x, 10.0), eps)
    delta = (p - x).flatten(1)
    size = {"linf": delta.abs().amax(1), "l2": delta.norm(dim=1), "mse": delta.square().mean(1)}[name]
    if name != "mse":  # mse's box binds before its ball at these radii
        assert torch.allclose(size, eps.flatten(), rtol=1e-4)


@pytest.mark.parametrize("name", THREATS)
def test_admissible_points_stay_put(name):
    threat = Threat(name)
    x = sources()
    eps = eps_of(name, 4)
    inside = threat.project(x, far_points(x, 0.01), eps)
    assert torch.allclose(threat.project(x, inside, eps), inside, atol=1e-7)


def test_linf_projection_is_a_clip():
    x = sources()
    eps = eps_of("linf", 4)
    v = far_points(x, 0.1)
    expected = torch.maximum(torch.minimum(v, x + eps), x - eps).clamp(0, 1)
    assert torch.allclose(Threat("linf").project(x, v, eps), expected, atol=1e-7)


def test_contains_rejects_points_outside():
    x = sources()
    eps = eps_of("mse", 4)
    threat = Threat("mse")
    p = threat.project(x, far_points(x, 1.0), eps)
    over = p.clone()
    over[0] = (x[0] + 1.01 * (p[0] - x[0])).clamp(0, 1)  # past the ball (or the box)
    over[1, 0, 0, 0] = 1.5  # outside the range
    assert threat.contains(x, over, eps).tolist() == [False, False, True, True]


@pytest.mark.parametrize("name", THREATS)
def test_random_start_is_admissible_and_independent_of_the_batch(name):
    threat = Threat(name)
    x = sources()
    eps = eps_of(name, 4)
    torch.manual_seed(5)
    batch = threat.random_start(x, eps, rng.image_generators(4))
    assert threat.contains(x, batch, eps).all()
    for i in range(4):
        torch.manual_seed(5)
        alone = threat.random_start(x[i : i + 1], eps[i : i + 1], rng.image_generators(1))
        assert torch.equal(alone[0], batch[i])


def test_defaults():
    assert DEFAULT_EPS["linf"] == 4 / 255 and DEFAULT_EPS["mse"] == 1e-4
    assert Threat("mse").box == MSE_BOX and Threat("l2").box is None


@pytest.mark.parametrize(
    ("name", "eps", "shape", "message"),
    [
        ("l1", None, None, "attack.threat='l1' is unknown"),
        ("linf", 0.0, None, "attack.eps=0.0 must be > 0"),
        ("mse", -1e-4, None, "attack.eps=-0.0001 must be > 0"),
        ("linf", 1.5, None, "attack.eps=1.5 is larger than the image allows"),
        ("l2", 14.0, (1, 3, 8, 8), "attack.eps=14.0 is larger than the image allows"),
    ],
)
def test_bad_budgets_are_named(name, eps, shape, message):
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        Threat(name).check(eps, shape)


def test_the_largest_l2_radius_is_allowed():
    Threat("l2").check(N**0.5, (1, *SHAPE))
