"""The codec registry: CompressAI zoo architectures by name, their rate-distortion
operating points, and loading of pretrained or local weights."""

from __future__ import annotations

import zipfile
from collections.abc import Sequence
from pathlib import Path

import torch
from compressai.entropy_models import EntropyModel, EntropyModelVbr
from compressai.models.utils import update_registered_buffers
from compressai.zoo import image as zoo_image
from compressai.zoo.pretrained import load_pretrained
from torch import nn

from rnic.codec_families import FAMILIES, from_fixed_rate, zoo_url

# The entropy coder's modules (variable-rate ones are not EntropyModels), whose tables change size.
ENTROPY_MODELS = (EntropyModel, EntropyModelVbr)

# Lagrange multipliers CompressAI's zoo codecs were trained with, by quality.
LAMBDAS = {
    "mse": (0.0018, 0.0035, 0.0067, 0.0130, 0.0250, 0.0483, 0.0932, 0.1800),
    "ms-ssim": (2.40, 4.58, 8.73, 16.64, 31.73, 60.50, 115.37, 220.00),
}
METRICS = tuple(LAMBDAS)

# Config names (and aliases) -> CompressAI zoo architecture names.
ARCHITECTURES = {
    "bmshj2018_factorized": "bmshj2018-factorized",
    "bmshj2018_hyperprior": "bmshj2018-hyperprior",
    "mbt2018_mean": "mbt2018-mean",
    "mbt2018": "mbt2018",
    "cheng2020_anchor": "cheng2020-anchor",
    "cheng2020_attn": "cheng2020-attn",
    "cheng2020": "cheng2020-anchor",
}


# Codecs that rnic trains on a CPU and ships inside the package (`rnic/weights/`), by config name: the
# zoo architecture or codec family (`rnic.codec_families`) they use, their widths (N, M), a family's own
# settings, and their lambda per quality (low, middle, high rate). A variable-rate family's quality is its
# rate, and one weights file holds every rate.
SHIPPED = {
    "bmshj2018_hyperprior_cpu": {
        "zoo": "bmshj2018-hyperprior",
        "widths": (64, 96),
        "lambdas": {"mse": (0.0025, 0.0067, 0.018)},
    },
    "mbt2018_mean_cpu": {
        "zoo": "mbt2018-mean",
        "widths": (64, 96),
        "lambdas": {"mse": (0.0025, 0.0067, 0.018)},
    },
    "mbt2018_mean_vbr_cpu": {
        "family": "mbt2018_mean_vbr",
        "widths": (64, 96),
        # Gains (1 / y's quantisation step) in the ratio sqrt(lambda), as CompressAI's ladder has; the
        # middle rate's step is 1, that of the fixed-rate codec the training starts from.
        "options": {"variable_bottleneck": True, "gains": (0.611, 1.0, 1.639)},
        "lambdas": {"mse": (0.0025, 0.0067, 0.018)},
    },
    "elic_cpu": {
        "family": "elic",
        "widths": (64, 96),
        "options": {"variant": "official", "groups": (8, 8, 16, 32, 32)},
        "lambdas": {"mse": (0.0025, 0.0067, 0.018)},
    },
    "tcm_cpu": {
        "family": "tcm",
        "widths": (32, 160),
        "options": {
            "num_slices": 5,
            "max_support_slices": 5,
            "config": (1, 1, 1, 1, 1, 1),
            "head_dim": (8, 16, 32, 32, 16, 8),
            "drop_path_rate": 0.0,
            "window_size": 8,
            "hyper_channels": 64,
            "hyper_head_dim": 32,
            "hyper_window_size": 4,
            "attention_dim": 32,
            "attention_head_dim": 16,
            "entropy_widths": (64, 64),
        },
        "lambdas": {"mse": (0.0025, 0.0067, 0.018)},
    },
}
WEIGHTS_DIR = Path(__file__).parent / "weights"


def is_variable_rate_shipped(arch: str) -> bool:
    """Whether one weights file of the shipped codec `arch` holds every rate."""
    family = FAMILIES.get(SHIPPED[arch].get("family"))
    return family is not None and "rate" in family.options


def _shipped_file(arch: str, metric: str, quality: int | None, robust: str | None, suffix: str) -> Path:
    rate = "" if quality is None else f"-q{int(quality)}"
    return WEIGHTS_DIR / f"{arch}-{metric}{rate}{f'-{robust}' if robust else ''}{suffix}"


def shipped_path(arch: str, metric: str, quality: int, robust: str | None = None) -> Path:
    """Where the shipped weights that code `arch` at `quality` are, or would be written."""
    per_rate = None if is_variable_rate_shipped(arch) else quality
    return _shipped_file(arch, metric, per_rate, robust, ".pth")


def shipped_weights(arch: str, metric: str, quality: int, robust: str | None = None) -> Path:
    """The shipped weights file of a CPU codec (`SHIPPED`) that codes at `quality`: the clean codec's, or
    with `robust` the one finetuned robustly by that training method; refused in one line if there is
    none. A variable-rate codec's file holds all its rates (no quality in its name)."""
    path = shipped_path(arch, metric, quality, robust)
    if metric not in SHIPPED[arch]["lambdas"] or not path.is_file():
        shipped = sorted(p.name for p in WEIGHTS_DIR.glob(f"{arch}-*.pth"))
        robust_key = f" model.robust={robust}" if robust else ""
        raise FileNotFoundError(
            f"model={arch} model.metric={metric} model.quality={quality}{robust_key}: rnic ships no such "
            f"weights (shipped: {', '.join(shipped) or 'none'})"
        )
    return path


def shipped_card(arch: str, metric: str, quality: int, robust: str | None = None) -> Path:
    """The card of a shipped rate point: beside its weights file, one per quality (a variable-rate codec's
    rates share one weights file and have a card each)."""
    return _shipped_file(arch, metric, quality, robust, ".json")


def shipped_architecture(arch: str) -> dict:
    """A shipped codec's architecture as its cards record it: the zoo name or codec family, the widths and
    a family's own settings."""
    spec = SHIPPED[arch]
    settings = {k: _plain(v) for k, v in spec.get("options", {}).items()}
    return {
        "architecture": spec.get("zoo") or spec["family"],
        "widths": {"N": spec["widths"][0], "M": spec["widths"][1]},
        **({"settings": settings} if settings else {}),
    }


def pretrained_file(arch: str, metric: str, quality: int, robust: str | None = None) -> Path | None:
    """Where `model.pretrained=true` weights come from: the shipped file of a CPU codec, or CompressAI's
    download in torch hub's cache (None until it has been downloaded)."""
    if arch in SHIPPED:
        return shipped_weights(arch, metric, quality, robust)
    if arch in FAMILIES:
        url = zoo_url(arch, metric)
        return _hub_file(url) if url else None
    url = zoo_image.model_urls.get(zoo_name(arch), {}).get(metric, {}).get(int(quality))
    return _hub_file(url) if url else None


def _hub_file(url: str) -> Path | None:
    """Where torch hub caches the download of `url` (None until it has been downloaded)."""
    path = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
    return path if path.is_file() else None


def zoo_name(arch: str) -> str:
    """Canonical zoo name for a config name, a zoo name or an alias."""
    name = ARCHITECTURES.get(arch, arch)
    if name not in zoo_image.model_architectures:
        known = ", ".join(sorted([*ARCHITECTURES, *FAMILIES]))
        raise ValueError(f"model.codec.arch={arch!r} is not a known codec; choose one of: {known}")
    return name


def qualities(arch: str) -> tuple[int, ...]:
    if arch in SHIPPED:
        return tuple(range(1, len(next(iter(SHIPPED[arch]["lambdas"].values()))) + 1))
    if arch in FAMILIES:
        return tuple(range(1, FAMILIES[arch].qualities + 1))
    return tuple(sorted(zoo_image.cfgs[zoo_name(arch)]))


def check_metric(metric: str) -> str:
    if metric not in METRICS:
        raise ValueError(f"model.metric={metric!r} is unknown; choose one of: {', '.join(METRICS)}")
    return metric


def rd_lambda(metric: str, quality: int, arch: str | None = None) -> float:
    """The lambda for a distortion metric and quality (1-based): the zoo's, a shipped codec's, or a codec
    family's (`rnic.codec_families`; a variable-rate codec's quality is its rate)."""
    check_metric(metric)
    if arch in SHIPPED:
        table = SHIPPED[arch]["lambdas"].get(metric, ())
    elif arch in FAMILIES:
        family = FAMILIES[arch]
        table = (family.lambdas or LAMBDAS).get(metric, ())[: family.qualities]
        if not table:
            raise ValueError(f"model={arch} has no lambda for model.metric={metric}; set model.lmbda")
    else:
        table = LAMBDAS[metric]
    if not 1 <= int(quality) <= len(table):
        raise ValueError(
            f"model.quality={quality} has no lambda; choose 1..{len(table)} (or set model.lmbda)"
        )
    return table[int(quality) - 1]


def build_codec(
    arch: str,
    quality: int = 3,
    metric: str = "mse",
    pretrained: bool = False,
    N: int | None = None,
    M: int | None = None,
    robust: str | None = None,
    **options,
) -> nn.Module:
    """A CompressAI zoo codec, optionally with the zoo's pretrained weights or other widths; a CompressAI
    codec outside the zoo's ladder (`rnic.codec_families`: ELIC, checkerboard, variable-rate; `options` are
    its own settings, such as `variant` or `rate`); or one of rnic's shipped CPU codecs (`SHIPPED`), whose
    pretrained weights load from the package, offline.

    `N`/`M` override the zoo widths for the quality (e.g. a small codec for a CPU);
    cheng2020 codecs have a single width `N`. `robust` names a training method whose robust finetuning of
    a shipped codec ships too (with `pretrained`).
    """
    if arch in FAMILIES:
        return build_family(arch, quality, metric, pretrained, N, M, robust, options)
    if arch in SHIPPED:
        return build_shipped(arch, quality, metric, pretrained, N, M, robust, options)
    if options:
        raise ValueError(f"model.{next(iter(options))} is not a setting of model={arch}")
    if robust:
        raise ValueError(f"model.robust={robust}: rnic ships robust weights only for {', '.join(SHIPPED)}")
    name = zoo_name(arch)
    check_metric(metric)
    valid = qualities(name)
    if int(quality) not in valid:
        raise ValueError(
            f"model.quality={quality} is out of range for {name}; choose {valid[0]}..{valid[-1]}"
        )
    quality = int(quality)
    widths = zoo_image.cfgs[name][quality]
    if M is not None and len(widths) == 1:
        raise ValueError(f"model.M={M} is not a width of {name}; it has only N")
    if pretrained:
        if N is not None or M is not None:
            raise ValueError(
                f"model.N/model.M cannot be combined with model.pretrained=true: "
                f"{name} quality {quality} was trained with widths {widths}"
            )
        # CompressAI's own loader: torch hub's cache first, then the download.
        return zoo_image._load_model(name, metric, quality, pretrained=True, progress=False)
    overrides = (N, M)[: len(widths)]
    widths = tuple(int(o) if o is not None else w for o, w in zip(overrides, widths, strict=True))
    return zoo_image.model_architectures[name](*widths)


def build_shipped(
    arch: str,
    quality: int,
    metric: str,
    pretrained: bool,
    N: int | None,
    M: int | None,
    robust: str | None,
    options: dict | None = None,
):
    """A shipped CPU codec (`SHIPPED`): its architecture at its widths and settings (null ones: the shipped
    ones), with the shipped weights of `quality` if `pretrained`."""
    spec = SHIPPED[arch]
    shipped_options = spec.get("options", {})
    options = dict(options or {})
    # A variable-rate codec: its quality is its rate.
    rate = (
        {"rate": check_rate(arch, quality, options.pop("rate", quality))}
        if is_variable_rate_shipped(arch)
        else {}
    )
    unknown = sorted(set(options) - set(shipped_options))
    if unknown:
        raise ValueError(f"model.{unknown[0]} is not a setting of model={arch}")
    settings = {
        key: (shipped if options.get(key) is None else options[key])
        for key, shipped in shipped_options.items()
    }
    if robust and not pretrained:
        raise ValueError(f"model.robust={robust} names shipped weights: it needs model.pretrained=true")
    check_metric(metric)
    if int(quality) not in qualities(arch):
        raise ValueError(
            f"model.quality={quality} is out of range for {arch}; choose 1..{len(qualities(arch))}"
        )
    widths = tuple(int(w) if w is not None else d for w, d in zip((N, M), spec["widths"], strict=True))
    if pretrained and widths != spec["widths"]:
        raise ValueError(
            f"model.N/model.M={widths} cannot be combined with model.pretrained=true: "
            f"{arch} was trained with widths {spec['widths']}"
        )
    for key, shipped in shipped_options.items():
        if pretrained and _plain(settings[key]) != _plain(shipped):
            raise ValueError(
                f"model.{key}={_plain(settings[key])} cannot be combined with model.pretrained=true: "
                f"{arch} was trained with model.{key}={_plain(shipped)}"
            )
    if "family" in spec:
        codec = FAMILIES[spec["family"]].make(*widths, **rate, **settings)
    else:
        codec = zoo_image.model_architectures[spec["zoo"]](*widths)
    return load_weights(codec, shipped_weights(arch, metric, quality, robust)) if pretrained else codec


def check_rate(arch: str, quality: int, rate) -> int:
    """A variable-rate codec's rate, refused unless it is its quality (which follows it in the configs)."""
    if rate != quality:
        raise ValueError(
            f"model.quality={quality} differs from model.rate={rate}: model={arch} codes at model.rate "
            "(its quality); set model.rate only"
        )
    return int(rate)


def _plain(value):
    """A setting as a plain value (a config list or a tuple as a list), to compare and to print."""
    is_list = isinstance(value, Sequence) and not isinstance(value, str)
    return [_plain(v) for v in value] if is_list else value


def build_family(
    arch: str, quality: int, metric: str, pretrained: bool, N: int | None, M: int | None, robust, options
):
    family = FAMILIES[arch]
    check_metric(metric)
    if robust:
        raise ValueError(f"model.robust={robust}: rnic ships robust weights only for {', '.join(SHIPPED)}")
    unknown = sorted(set(options) - set(family.options))
    if unknown:
        raise ValueError(f"model.{unknown[0]} is not a setting of model={arch}")
    codec_options = {key: value for key, value in options.items() if value is not None}
    if "rate" in family.options:  # a variable-rate codec: its quality is its rate
        check_rate(arch, quality, options.get("rate"))
    elif int(quality) not in qualities(arch):
        raise ValueError(f"model.quality={quality} is out of range for {arch}; choose 1..{family.qualities}")
    if M is not None and len(family.widths) == 1:
        raise ValueError(f"model.M={M} is not a width of {arch}; it has only N")
    widths = tuple(int(w) if w is not None else d for w, d in zip((N, M), family.widths, strict=False))
    if pretrained:
        if family.weights_source is not None:
            raise ValueError(
                f"model={arch} model.pretrained=true: rnic downloads no weights; {family.weights_source}"
            )
        if family.zoo is None:
            shipped = [name for name, spec in SHIPPED.items() if spec.get("family") == arch]
            also = f"; rnic ships it at CPU widths: model={shipped[0]}" if shipped else ""
            raise ValueError(
                f"model.pretrained=true: CompressAI ships no weights for model={arch}{also}; train it or "
                "load a CompressAI or rnic state dict with model.weights=<file>"
            )
        if zoo_url(arch, metric) is None:
            raise ValueError(f"model.pretrained=true: CompressAI ships no {metric} weights for model={arch}")
        if widths != family.widths or options.get("variable_bottleneck") is False:
            raise ValueError(
                f"model.N/model.M={widths} (model.variable_bottleneck={options.get('variable_bottleneck')}) "
                f"cannot be combined with model.pretrained=true: CompressAI's {arch} weights have widths "
                f"{family.widths} and the variable bottleneck"
            )
    codec = family.make(*widths, **codec_options)
    return load_released(codec, arch, metric) if pretrained else codec


def strip_prefixes(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove wrappers' prefixes: torch.compile's `_orig_mod.` and DataParallel's `module.`."""
    cleaned = {}
    for key, value in state_dict.items():
        while key.startswith(("_orig_mod.", "module.")):
            key = key.split(".", 1)[1]
        cleaned[key] = value
    return cleaned


def read_checkpoint(path: str | Path, key: str = "model.weights"):
    """`torch.load` of a weights or checkpoint file (tensors only), refusing in one line, named after the
    config `key` that gave it, a missing, truncated or foreign file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{key}={str(path)!r}: no such file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        if zipfile.is_zipfile(path):
            cause = f"{type(err).__name__}: {str(err).strip().splitlines()[0][:160]}"
        elif path.read_bytes()[:2] in (b"PK", b"\x80\x02"):
            cause = "the file is truncated or damaged"
        else:
            cause = "not a PyTorch checkpoint (no zip archive or pickle)"
        raise ValueError(f"{key}={str(path)!r} is not a readable checkpoint: {cause}") from None


def read_codec_state(path: str | Path) -> tuple[dict[str, torch.Tensor], str | None]:
    """The codec's state dict from an rnic Lightning checkpoint or a CompressAI state dict.

    Returns the state dict and the codec class name recorded in an rnic checkpoint (else None).
    """
    ckpt = read_checkpoint(path)
    if not isinstance(ckpt, dict):
        raise ValueError(f"model.weights={str(path)!r} holds a {type(ckpt).__name__}, not a state dict")
    codec_class = None
    if "rnic" in ckpt:  # written by rnic's CodecModule
        codec_class = ckpt["rnic"].get("codec_class")
        state = {k[len("codec.") :]: v for k, v in ckpt["state_dict"].items() if k.startswith("codec.")}
    elif "state_dict" in ckpt:  # CompressAI's training script
        state = ckpt["state_dict"]
    else:
        state = ckpt
    return load_pretrained(strip_prefixes(state)), codec_class


def load_codec_state(codec: nn.Module, state: dict[str, torch.Tensor], strict: bool = True):
    """`codec.load_state_dict(state)` after resizing the entropy coder's tables to the stored sizes.

    The tables (`_quantized_cdf`, ...) change size with every `update()`, and torch cannot load
    a buffer of another size; CompressAI only resizes empty ones.
    """
    for name, module in codec.named_modules():
        if isinstance(module, ENTROPY_MODELS):
            prefix = f"{name}." if name else ""
            buffers = [b for b, _ in module.named_buffers(recurse=False) if f"{prefix}{b}" in state]
            update_registered_buffers(module, name, buffers, state, policy="resize")
    return codec.load_state_dict(state, strict=strict)


def load_weights(codec: nn.Module, path: str | Path) -> nn.Module:
    """Load local weights into `codec`, resizing the entropy coder's buffers to match. A variable-rate
    codec also takes the weights of its fixed-rate architecture (`rnic.codec_families.from_fixed_rate`:
    its variable-rate modules keep their initial values)."""
    state, codec_class = read_codec_state(path)
    variable_rate_state = from_fixed_rate(codec, state)
    if variable_rate_state is not None:
        state, codec_class = variable_rate_state, None
    if codec_class is not None and codec_class != type(codec).__name__:
        raise ValueError(
            f"model.weights={str(path)!r} holds a {codec_class} but model= builds a {type(codec).__name__}"
        )
    try:
        load_codec_state(codec, state)
    except RuntimeError as err:
        first = str(err).strip().splitlines()
        detail = " ".join(line.strip() for line in first[:3])
        raise ValueError(
            f"model.weights={str(path)!r} does not fit {type(codec).__name__} as configured "
            f"(check model= and model.N/model.M): {detail}"
        ) from None
    return codec


def load_released(codec: nn.Module, arch: str, metric: str) -> nn.Module:
    """CompressAI's released weights into `codec`, strictly, through torch hub (its cache first)."""
    state = torch.hub.load_state_dict_from_url(zoo_url(arch, metric), progress=False, map_location="cpu")
    state.pop("QuantOffset", None)  # an unused entry of the released files (CompressAI drops it too)
    load_codec_state(codec, state)
    return codec
