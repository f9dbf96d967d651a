import pytest
import torch
from compressai.zoo import image as zoo_image
from compressai.zoo import image_vbr

from rnic import rd
from rnic.attacks.square import is_autoregressive
from rnic.codec_families import FAMILIES, VariableRate
from rnic.codecs import ARCHITECTURES, LAMBDAS, build_codec, load_weights, pretrained_file, rd_lambda
from rnic.coding import compress_decompress

# Small settings of each architecture: cheng2020 codecs have only N; ELIC below M=129 needs its own groups;
# a variable-rate codec's quality is its rate.
SMALL = {
    "elic": {"N": 16, "M": 32, "groups": [4, 4, 8, 16]},
    "bmshj2018_hyperprior_vbr": {"N": 16, "M": 24, "rate": 1},
    "mbt2018_mean_vbr": {"N": 16, "M": 24, "rate": 1},
    "mbt2018_vbr": {"N": 16, "M": 24, "rate": 1},
    "tcm": {
        "N": 16,
        "M": 40,
        "config": [1] * 6,
        "head_dim": [8] * 6,
        "hyper_channels": 32,
        "hyper_head_dim": 8,
        "attention_dim": 16,
        "attention_head_dim": 8,
        "entropy_widths": [32, 32],
    },
    "mlicpp": {"N": 16, "M": 64, "slice_num": 2},
}


def small(arch: str, **options) -> torch.nn.Module:
    widths = {"N": 16} if arch.startswith("cheng2020") else {"N": 16, "M": 24}
    settings = {**SMALL.get(arch, widths), **options}
    return build_codec(arch, quality=settings.get("rate", 1), **settings)


def trained_looking(codec: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Perturb a fresh codec so that a load that silently did nothing would be caught."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in codec.parameters():
            param.add_(0.01 * torch.randn(param.shape, generator=generator))
    codec.update(force=True)
    return codec.eval()


# rnic's own codecs (TCM, MLIC++) code in the test below and in their own test files.
@pytest.mark.parametrize(
    "arch", sorted([*ARCHITECTURES, *(a for a in FAMILIES if a not in ("tcm", "mlicpp"))])
)
def test_every_zoo_architecture_codes_an_image(arch):
    codec = trained_looking(small(arch))
    x = torch.rand(1, 3, 70, 90)
    decoded, bpp = compress_decompress(codec, x)
    assert decoded.shape == x.shape
    assert bpp.item() > 0


def spread(codec: torch.nn.Module, gain: float = 30.0) -> torch.nn.Module:
    """Latents many quantisation steps wide, as a trained codec's are (a fresh codec's all round to 0)."""
    convs = [m for m in codec.g_a.children() if isinstance(m, torch.nn.Conv2d)]
    last = (convs or [m for m in codec.g_a.modules() if isinstance(m, torch.nn.Conv2d)])[-1]
    with torch.no_grad():
        last.weight.mul_(gain)
        last.bias.mul_(gain)
    codec.update(force=True)
    return codec


@pytest.mark.parametrize("arch", sorted(FAMILIES))
def test_codec_families_decode_what_their_eval_forward_reconstructs(arch):
    codec = spread(trained_looking(small(arch)))
    x = torch.rand(1, 3, 64, 96)  # padded to 64 x 128 for coding
    decoded, bpp = compress_decompress(codec, x)

    padded, unpadding = rd.pad(x, rd.stride(codec))
    with torch.no_grad():
        encoded = codec.compress(padded)
        # CompressAI's own decoder, called as CompressAI calls it (a variable-rate codec at its rate's index).
        if isinstance(codec, VariableRate):
            own = super(VariableRate, codec).decompress(
                encoded["strings"], encoded["shape"], 2, codec.rate - 1
            )
        else:
            own = codec.decompress(encoded["strings"], encoded["shape"])
    assert torch.equal(decoded, rd.unpad(own["x_hat"], unpadding).clamp(0, 1))
    assert bpp.item() == 8 * sum(len(stream[0]) for stream in encoded["strings"]) / (64 * 96)
    # Unlike mbt2018's and cheng2020's, their eval forward is the decoder's output: attacks and smoothing
    # may score them by it.
    with torch.no_grad():
        forward = rd.forward_padded(codec, x)[0].clamp(0, 1)
    assert torch.allclose(forward, decoded, atol=1e-5)
    assert not is_autoregressive(codec)


def test_widths_follow_the_zoo_unless_overridden():
    assert zoo_image.cfgs["bmshj2018-hyperprior"][6][1] == build_codec("bmshj2018_hyperprior", quality=6).M
    codec = build_codec("mbt2018_mean", quality=2, N=24, M=40)
    assert (codec.N, codec.M) == (24, 40)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"arch": "bmshj2018_hyperprior", "quality": 9}, "model.quality=9 is out of range"),
        ({"arch": "cheng2020_anchor", "quality": 7}, "choose 1..6"),
        ({"arch": "cheng2020", "quality": 0}, "model.quality=0"),
        ({"arch": "jpeg2000"}, "model.codec.arch='jpeg2000' is not a known codec"),
        ({"arch": "mbt2018", "metric": "psnr"}, "model.metric='psnr' is unknown"),
        ({"arch": "cheng2020_attn", "M": 64}, "model.M=64 is not a width"),
        ({"arch": "mbt2018", "pretrained": True, "N": 32}, "cannot be combined with model.pretrained"),
        ({"arch": "elic", "variant": "fast"}, "model.variant='fast' is unknown"),
        ({"arch": "elic", "N": 16, "M": 64}, "model.groups=null"),
        ({"arch": "elic", "N": 16, "M": 32, "groups": [4, 4, 8]}, "summing to model.M=32"),
        ({"arch": "elic", "rate": 2}, "model.rate is not a setting of model=elic"),
        ({"arch": "elic", "pretrained": True}, "CompressAI ships no weights for model=elic"),
        ({"arch": "cheng2020_checkerboard", "quality": 7}, "choose 1..6"),
        ({"arch": "cheng2020_checkerboard", "M": 32}, "model.M=32 is not a width"),
        (
            {"arch": "bmshj2018_hyperprior_vbr", "N": 16, "M": 24, "quality": 9, "rate": 9},
            "model.rate=9 is out of range",
        ),
        (
            {"arch": "mbt2018_mean_vbr", "N": 16, "M": 24, "quality": 2.5, "rate": 2.5},
            "model.rate=2.5 is out of",
        ),
        ({"arch": "mbt2018_mean_vbr", "quality": 3, "rate": 5}, "model.quality=3 differs from model.rate=5"),
        (
            {"arch": "mbt2018_mean_vbr", "quality": 8, "rate": 8, "pretrained": True, "N": 16},
            "cannot be combined",
        ),
    ],
)
def test_bad_codec_settings_name_the_key(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(".", r"\.")):
        build_codec(**kwargs)


def test_lambda_table_matches_the_zoo_training():
    assert rd_lambda("mse", 1) == 0.0018
    assert rd_lambda("ms-ssim", 8) == 220.0
    assert len(LAMBDAS["mse"]) == len(LAMBDAS["ms-ssim"]) == 8


def test_codec_families_have_their_own_lambdas():
    assert rd_lambda("mse", 1, "elic") == 0.0004 and rd_lambda("mse", 8, "elic") == 0.045  # ELIC's
    with pytest.raises(ValueError, match="model=elic has no lambda for model.metric=ms-ssim"):
        rd_lambda("ms-ssim", 3, "elic")
    with pytest.raises(ValueError, match="choose 1..6"):
        rd_lambda("mse", 7, "cheng2020_checkerboard")
    # A variable-rate codec's rate r trains with CompressAI's lambda lmbda[r - 1].
    codec = small("mbt2018_mean_vbr")
    assert [rd_lambda("mse", r, "mbt2018_mean_vbr") for r in codec.rates] == codec.lmbda


@pytest.mark.parametrize("arch", ["bmshj2018_hyperprior_vbr", "mbt2018_mean_vbr", "mbt2018_vbr"])
def test_a_variable_rate_codec_codes_every_rate_with_the_same_weights(arch):
    codec = spread(trained_looking(small(arch)))
    x = torch.rand(1, 3, 64, 64)
    bpp = {}
    for rate in (2, 7):
        codec.rate = rate
        codec.update(force=True)  # z's tables follow the rate (variable bottleneck)
        decoded, bpp[rate] = compress_decompress(codec, x)
        with torch.no_grad():
            assert torch.allclose(rd.forward_padded(codec, x)[0].clamp(0, 1), decoded, atol=1e-5)
    assert bpp[7].item() > 1.5 * bpp[2].item()  # a finer quantisation step, more bits
    with pytest.raises(ValueError, match="model.rate=0 is out of range"):
        codec.rate = 0


def test_the_variable_bottlenecks_quantiles_learn_from_the_aux_loss():
    codec = small("mbt2018_mean_vbr")  # variable bottleneck, as CompressAI's released weights
    codec.aux_loss().backward()
    assert codec.entropy_bottleneck.quantiles.grad.abs().sum() > 0


def test_pretrained_weights_come_through_compressais_loader(tmp_path, monkeypatch):
    # The real download path, served from torch hub's cache as it would be after a download.
    reference = trained_looking(build_codec("bmshj2018_factorized", quality=1), seed=3)
    url = zoo_image.model_urls["bmshj2018-factorized"]["mse"][1]
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(reference.state_dict(), cache / url.rsplit("/", 1)[1])
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    codec = build_codec("bmshj2018_factorized", quality=1, pretrained=True).eval()
    x = torch.rand(1, 3, 64, 64)
    assert torch.equal(codec.g_a(x), reference.g_a(x))
    assert compress_decompress(codec, x)[1].item() == compress_decompress(reference, x)[1].item()


@pytest.mark.parametrize("arch", ["bmshj2018_hyperprior_vbr", "mbt2018_mean_vbr", "mbt2018_vbr"])
def test_variable_rate_weights_come_through_compressais_loader(tmp_path, monkeypatch, arch):
    # CompressAI 1.2.8's zoo releases MSE weights for each (N=192, M=320; mbt2018-vbr without the variable
    # bottleneck), served here from torch hub's cache as they would be after a download.
    reference = trained_looking(build_codec(arch, quality=8, rate=8), seed=3)
    url = image_vbr.model_urls[FAMILIES[arch].zoo]["mse"]
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save({**reference.state_dict(), "QuantOffset": torch.zeros(1)}, cache / url.rsplit("/", 1)[1])
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    codec = build_codec(arch, quality=3, rate=3, pretrained=True).eval()
    for coder in (codec, reference):  # the stored tables are rate 8's
        coder.rate = 3
        coder.update(force=True)
    x = torch.rand(1, 3, 64, 64)
    assert torch.equal(codec.g_a(x), reference.g_a(x))
    assert compress_decompress(codec, x)[1].item() == compress_decompress(reference, x)[1].item()
    assert pretrained_file(arch, "mse", 3) == cache / url.rsplit("/", 1)[1]


def test_compressai_state_dict_round_trip_gives_identical_bitstreams(tmp_path):
    codec = trained_looking(small("mbt2018_mean"))
    path = tmp_path / "checkpoint.pth.tar"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in codec.state_dict().items()}}, path)

    loaded = load_weights(small("mbt2018_mean"), path).eval()
    x = torch.rand(2, 3, 64, 128)
    padded, _ = rd.pad(x)
    expected, got = codec.compress(padded), loaded.compress(padded)
    assert got["strings"] == expected["strings"]
    assert torch.equal(compress_decompress(loaded, x)[0], compress_decompress(codec, x)[0])


def test_weights_of_another_architecture_are_refused(tmp_path):
    path = tmp_path / "other.pth"
    torch.save(small("bmshj2018_factorized").state_dict(), path)
    with pytest.raises(ValueError, match="does not fit ScaleHyperprior"):
        load_weights(small("bmshj2018_hyperprior"), path)


def test_missing_or_unreadable_weights_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="model.weights=.*nope.pth"):
        load_weights(small("mbt2018"), tmp_path / "nope.pth")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pth' is not a readable checkpoint"):
        load_weights(small("mbt2018"), junk)
