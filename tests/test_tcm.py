"""model=tcm against the authors' LIC-TCM: tests/data/make_tcm_reference.py ran their code (jmliu206/LIC_TCM)
on a tiny instance with seeded weights and stored its state dict and outputs; rnic's model must load that
file strictly through `model.weights=` and reproduce y, the likelihoods, the reconstruction and the
streams."""

from __future__ import annotations

import pytest
import torch
from conftest import ROOT, compose_config

from rnic.attacks.proxy import quantization_proxy
from rnic.coding import compress_decompress
from rnic.config import codec_from_config
from rnic.models.tcm import TCM

DATA = ROOT / "tests" / "data"
WEIGHTS = DATA / "tcm_reference.pth.tar"
ATOL = 1e-5


@pytest.fixture(scope="module")
def reference() -> dict:
    return torch.load(DATA / "tcm_reference_outputs.pt", weights_only=True)


def tiny_overrides(reference: dict) -> list[str]:
    """model=tcm at the reference's widths, as command-line overrides."""
    keys = {**reference["meta"]["widths"], **reference["meta"]["fixed"]}
    return ["model=tcm", *(f"model.{key}={str(value).replace(' ', '')}" for key, value in keys.items())]


@pytest.fixture(scope="module")
def codec(reference, tmp_path_factory) -> TCM:
    """The authors' weights loaded by attack.py's own path (strict), with the coder's tables built."""
    cfg = compose_config(
        tmp_path_factory.mktemp("tcm"),
        *tiny_overrides(reference),
        f"model.weights={WEIGHTS}",
        config_name="attack",
    )
    codec = codec_from_config(cfg).eval()
    codec.update(force=True)
    return codec


def source(reference: dict) -> torch.Tensor:
    return reference["image"].float() / 255


def assert_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(actual, expected, rtol=0, atol=ATOL)


@torch.no_grad()
def test_eval_forward_reproduces_the_authors_model(codec, reference):
    x = source(reference)
    assert_close(codec.g_a(x), reference["y"])
    out = codec(x)
    assert_close(out["x_hat"], reference["x_hat"])
    for name in ("y", "z"):
        assert_close(out["likelihoods"][name], reference["likelihoods"][name])


@torch.no_grad()
def test_training_forward_draws_the_same_noise_as_the_authors_model(codec, reference):
    codec.train()
    try:
        torch.manual_seed(reference["meta"]["train_seed"])
        out = codec(source(reference))
    finally:
        codec.eval()
    for name in ("y", "z"):
        assert_close(out["likelihoods"][name], reference["train_likelihoods"][name])
    assert_close(out["x_hat"], reference["x_hat"])  # rounded with straight-through gradients, not noise


@torch.no_grad()
def test_streams_are_the_authors_and_decode_to_their_image(codec, reference):
    x = source(reference)
    encoded = codec.compress(x)
    assert encoded["strings"] == reference["strings"]
    assert tuple(encoded["shape"]) == reference["shape"]
    decoded = codec.decompress(encoded["strings"], encoded["shape"])["x_hat"]
    assert_close(decoded, reference["x_hat"].clamp(0, 1))  # their decoder's output (the script checks)
    # rnic's real coding path: the same image and the streams' exact size.
    x_hat, bpp = compress_decompress(codec, x)
    assert_close(x_hat, decoded)
    size = sum(len(stream[0]) for stream in reference["strings"])
    assert bpp.item() == pytest.approx(8 * size / x[0, 0].numel())


@torch.no_grad()
def test_a_batch_codes_each_image_as_alone(codec, reference):
    x = source(reference)
    batch = torch.cat([x.flip(-1), x])
    encoded = codec.compress(batch)
    assert [stream[1] for stream in encoded["strings"]] == [stream[0] for stream in reference["strings"]]
    assert encoded["strings"][0][0] != encoded["strings"][0][1]
    decoded = codec.decompress(encoded["strings"], encoded["shape"])["x_hat"]
    assert_close(decoded[1:], reference["x_hat"].clamp(0, 1))


def test_rnic_proxies_replace_the_rounding_of_the_reconstruction(codec, reference):
    x = source(reference)
    with torch.no_grad():
        with quantization_proxy(codec, "ste"):  # the authors' rounding, as a proxy
            assert_close(codec(x)["x_hat"], reference["x_hat"])
        for latent in (codec.entropy_bottleneck, codec.gaussian_conditional):
            with quantization_proxy(latent, "skip"):  # z, then y, not rounded at all
                assert (codec(x)["x_hat"] - reference["x_hat"]).abs().max() > 1e-3
    # Outside a proxy the reconstruction rounds with straight-through gradients: attackable as it is.
    x = x.clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(codec(x)["x_hat"].square().sum(), x)
    assert gradient.abs().sum() > 0


def test_prefixed_checkpoints_load(reference, tmp_path):
    """Checkpoints saved from DataParallel carry `module.` prefixes, as the authors' eval.py expects."""
    state = torch.load(WEIGHTS, weights_only=True)["state_dict"]
    path = tmp_path / "prefixed.pth.tar"
    torch.save({"state_dict": {f"module.{key}": value for key, value in state.items()}}, path)
    cfg = compose_config(tmp_path, *tiny_overrides(reference), f"model.weights={path}", config_name="attack")
    codec = codec_from_config(cfg)
    assert torch.equal(codec.g_a[0].conv1.weight, state["g_a.0.conv1.weight"])


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["model.pretrained=true"],
            "model=tcm model.pretrained=true: rnic downloads no weights; .*Google Drive",
        ),
        (["model.M=320", "model.num_slices=3"], "model.M=320 is not divisible by model.num_slices=3"),
        (["model.config=[2,2]"], r"model.config=\[2, 2\] and model.head_dim=.* need 6 entries"),
        (["model.N=16"], r"model.head_dim=\[8, 16, 32, 32, 16, 8\]: heads must divide 16 channels"),
        (["model.weights=null", "+model.codec.heads=3"], "model.heads is not a setting of model=tcm"),
    ],
)
def test_bad_settings_are_refused_in_one_line(tmp_path, overrides, message):
    cfg = compose_config(tmp_path, "model=tcm", *overrides, config_name="attack")
    with pytest.raises(ValueError, match=message):
        codec_from_config(cfg)


def test_weights_of_other_widths_are_refused(reference, tmp_path):
    overrides = [*tiny_overrides(reference), "model.N=8", f"model.weights={WEIGHTS}"]
    cfg = compose_config(tmp_path, *overrides, config_name="attack")
    with pytest.raises(ValueError, match="does not fit TCM as configured"):
        codec_from_config(cfg)
