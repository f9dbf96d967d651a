"""model=mlicpp against the authors' MLIC++: their seeded state dict (tests/data/mlicpp_*_weights.pth.xz, in
their checkpoint layout) loads strictly through `model.weights=`, and rnic's model reproduces what their
model computed on it (tests/data/mlicpp_outputs.pt; made by tests/data/make_mlicpp_reference.py from their
code): y, the likelihoods, x_hat, the very bitstreams, and the decode of their bitstreams."""

from __future__ import annotations

import lzma
from pathlib import Path

import pytest
import torch

from rnic.attacks.proxy import per_image_noise, quantization_proxy
from rnic.codecs import build_codec, rd_lambda
from rnic.coding import compress_decompress
from rnic.config import codec_from_config
from tests.conftest import ROOT, compose_config

DATA = ROOT / "tests" / "data"
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def reference() -> dict:
    return torch.load(DATA / "mlicpp_outputs.pt", weights_only=True)


def authors_checkpoint(folder: Path, release: str) -> Path:
    """Their checkpoint file as they distribute it (the repository keeps it xz-compressed)."""
    path = folder / f"mlicpp_{release}.pth.tar"
    path.write_bytes(lzma.decompress((DATA / f"mlicpp_{release}_weights.pth.xz").read_bytes()))
    return path


def mlicpp_config(folder: Path, reference: dict, *overrides: str):
    widths = reference["widths"]
    return compose_config(
        folder,
        "model=mlicpp",
        f"model.N={widths['N']}",
        f"model.M={widths['M']}",
        f"model.slice_num={widths['slice_num']}",
        f"model.context_window={widths['context_window']}",
        *overrides,
        config_name="attack",
    )


@pytest.fixture(scope="module")
def authors_codec(tmp_path_factory, reference):
    """release -> rnic's codec with the authors' weights, loaded by the path attack.py and train.py take."""
    codecs = {}

    def load(release: str):
        if release not in codecs:
            folder = tmp_path_factory.mktemp(f"mlicpp_{release}")
            weights = authors_checkpoint(folder, release)
            cfg = mlicpp_config(folder, reference, f"model.release={release}", f"model.weights={weights}")
            codecs[release] = codec_from_config(cfg).eval()
        return codecs[release]

    return load


def assert_close(actual: torch.Tensor, expected: torch.Tensor, name: str, tolerance: float = TOLERANCE):
    assert actual.shape == expected.shape, name
    gap = (actual - expected).abs().max().item()
    assert gap <= tolerance, f"{name} differs by {gap:.3g}"


@pytest.mark.parametrize("release", ["2023", "2024"])
@torch.no_grad()
def test_the_authors_weights_give_their_outputs_and_bitstreams(authors_codec, reference, release):
    codec = authors_codec(release)
    expected, x = reference[release], reference["x"]
    out = codec(x)
    assert_close(codec.g_a(x), expected["y"], "y")
    assert_close(out["likelihoods"]["y"], expected["y_likelihoods"], "y likelihoods")
    assert_close(out["likelihoods"]["z"], expected["z_likelihoods"], "z likelihoods")
    # The decoder's output sums through every synthesis layer: CPUs whose kernels differ (AVX2, AVX-512) move
    # it by about 2e-5 (measured); a wrong layer or attention moves it by orders of magnitude more.
    assert_close(out["x_hat"], expected["x_hat"], "x_hat", tolerance=1e-4)

    encoded = codec.compress(x)
    assert encoded["strings"] == expected["strings"]  # byte for byte: same symbols, order and tables
    assert tuple(encoded["shape"]) == expected["shape"]
    decoded = codec.decompress(expected["strings"], expected["shape"])
    assert_close(decoded["x_hat"], expected["decoded_x_hat"], "decoded x_hat", tolerance=1e-4)


@torch.no_grad()
def test_each_image_of_a_batch_has_its_own_stream_and_decodes_to_the_forward(authors_codec, reference):
    codec = authors_codec("2024")
    x = torch.cat([reference["x"], reference["x"].flip(-1)])
    encoded = codec.compress(x)
    assert [len(stream) for stream in encoded["strings"]] == [2, 2]
    assert encoded["strings"][0][0] == reference["2024"]["strings"][0][0]
    decoded, bpp = compress_decompress(codec, x)
    # The forward rounds as the coder does (no context-model mismatch); batched convolutions differ from
    # one image's in the last bits only, a rounding mismatch would move pixels by far more.
    assert_close(decoded, codec(x)["x_hat"].clamp(0, 1), "decoded batch", tolerance=1e-4)
    streams = sum(len(stream[1]) for stream in encoded["strings"])
    assert bpp[1].item() == pytest.approx(8 * streams / (64 * 128))


def test_attack_proxies_replace_its_rounding(authors_codec, reference):
    codec = authors_codec("2024")
    x = reference["x"]
    with torch.no_grad():
        rounded = codec(x)["x_hat"]
        with quantization_proxy(codec, "ste"):
            assert torch.equal(codec(x)["x_hat"], rounded)  # the same rounding, straight through
        with quantization_proxy(codec, "noise"), per_image_noise([torch.Generator().manual_seed(0)]):
            noisy = codec(x)
        assert (noisy["x_hat"] - rounded).abs().max() > 1e-3
        assert (noisy["likelihoods"]["y"] - codec(x)["likelihoods"]["y"]).abs().max() > 1e-3
    delta = torch.zeros_like(x, requires_grad=True)
    with quantization_proxy(codec, "skip"):
        (gradient,) = torch.autograd.grad(codec(x + delta)["x_hat"].square().sum(), delta)
    assert gradient.abs().sum() > 0


def test_the_other_release_does_not_load(tmp_path, reference):
    weights = authors_checkpoint(tmp_path, "2023")
    cfg = mlicpp_config(tmp_path, reference, "model.release=2024", f"model.weights={weights}")
    with pytest.raises(ValueError, match="does not fit MLICPlusPlus as configured"):
        codec_from_config(cfg)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.pretrained=true"], "model=mlicpp model.pretrained=true: rnic downloads no weights"),
        (["model.M=96", "model.slice_num=4"], "model.slice_num=4 does not fit model.M=96"),
        (["model.release=2022"], "model.release=2022 is not one of the authors' releases"),
        (["model.release=latest"], "model.release=latest is not one of the authors' releases"),
    ],
)
def test_bad_settings_are_refused_in_one_line(tmp_path, overrides, message):
    cfg = compose_config(
        tmp_path, "model=mlicpp", "model.N=32", "model.M=64", "model.slice_num=2", *overrides
    )
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        codec_from_config(cfg)


def test_the_quality_names_the_authors_lambdas():
    assert rd_lambda("mse", 6, "mlicpp") == 0.0483
    assert rd_lambda("ms-ssim", 1, "mlicpp") == 2.40
    with pytest.raises(ValueError, match="model.quality=7 has no lambda"):
        rd_lambda("mse", 7, "mlicpp")
    assert build_codec("mlicpp", N=32, M=64, slice_num=2).slice_num == 2
