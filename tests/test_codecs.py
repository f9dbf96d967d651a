import pytest
import torch
from compressai.zoo import image as zoo_image

from rnic import rd
from rnic.codecs import ARCHITECTURES, LAMBDAS, build_codec, load_weights, rd_lambda
from rnic.coding import compress_decompress


def small(arch: str) -> torch.nn.Module:
    widths = {"N": 16} if arch.startswith("cheng2020") else {"N": 16, "M": 24}
    return build_codec(arch, quality=1, **widths)


def trained_looking(codec: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Perturb a fresh codec so that a load that silently did nothing would be caught."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in codec.parameters():
            param.add_(0.01 * torch.randn(param.shape, generator=generator))
    codec.update(force=True)
    return codec.eval()


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_every_zoo_architecture_codes_an_image(arch):
    codec = trained_looking(small(arch))
    x = torch.rand(1, 3, 70, 90)
    decoded, bpp = compress_decompress(codec, x)
    assert decoded.shape == x.shape
    assert bpp.item() > 0


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
    ],
)
def test_bad_codec_settings_name_the_key(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(".", r"\.")):
        build_codec(**kwargs)


def test_lambda_table_matches_the_zoo_training():
    assert rd_lambda("mse", 1) == 0.0018
    assert rd_lambda("ms-ssim", 8) == 220.0
    assert len(LAMBDAS["mse"]) == len(LAMBDAS["ms-ssim"]) == 8


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
