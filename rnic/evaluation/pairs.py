"""Figures of images and their adversarial versions, coded for real: one record per image (what attack.py's
results hold, see `rnic.evaluation.records` for their columns)."""

from __future__ import annotations

import time

import numpy as np
import torch

from rnic import rd
from rnic.attacks.rng import measured_draws
from rnic.classical import matched_reference
from rnic.coding import compress_decompress, device_of

# A rate attack's coding times (rnic.evaluation.records.RATE_COLUMNS) are the median of this many codings.
CODING_REPEATS = 3


@torch.no_grad()
def code_pair(
    coder: torch.nn.Module, x: torch.Tensor, x_adv: torch.Tensor
) -> tuple[list[dict], torch.Tensor, torch.Tensor]:
    """Real-bitstream figures of a batch of images and their adversarial versions, one record each."""
    # Behind a random defense, each image coded with the draw an ensemble selected on (rng.measured_draws)
    with measured_draws():
        clean_hat, bpp_clean = compress_decompress(coder, x)
    choices = {f"{k}_clean": v for k, v in getattr(coder, "last_choice", {}).items()}  # classical coders
    with measured_draws():
        adv_hat, bpp_adv = compress_decompress(coder, x_adv)
    choices.update({f"{k}_adv": v for k, v in getattr(coder, "last_choice", {}).items()})
    columns = {
        "psnr_in": rd.psnr(x_adv, x),
        "linf": (x_adv - x).flatten(1).abs().amax(1) * 255,
        "psnr_clean": rd.psnr(clean_hat, x),
        "psnr_adv": rd.psnr(adv_hat, x),
        "psnr_adv_in": rd.psnr(adv_hat, x_adv),
        "bpp_clean": bpp_clean,
        "bpp_adv": bpp_adv,
        "bpp_ratio": bpp_adv / bpp_clean,  # the rate's blow-up, x-fold
        "vi": rd.vulnerability_index(adv_hat, clean_hat, x_adv, x),
    }
    if rd.has_ms_ssim(x):
        ms_adv, ms_clean = rd.ms_ssim(adv_hat, x), rd.ms_ssim(clean_hat, x)
        columns["msssim_clean"] = ms_clean
        columns["msssim_adv"] = ms_adv
        vi_ms = 10 * torch.log10((1 - rd.ms_ssim(adv_hat, clean_hat)) / (1 - rd.ms_ssim(x_adv, x)))
        columns["vi_msssim"] = vi_ms
    records = []
    for i in range(x.shape[0]):
        record = dict.fromkeys(("msssim_clean", "msssim_adv", "vi_msssim"))
        record.update({key: rd.finite_or_none(value[i]) for key, value in columns.items()})
        record.update({key: values[i] for key, values in choices.items()})
        records.append(record)
    return records, clean_hat, adv_hat


@torch.no_grad()
def add_undefended(
    records: list[dict], plain_coder: torch.nn.Module, x: torch.Tensor, x_adv: torch.Tensor, adaptive: bool
) -> None:
    """The figures without the defense, per record: the clean cost, and for a non-adaptive attack
    (computed against the undefended codec) what its images do to that codec."""
    plain_hat, plain_bpp = compress_decompress(plain_coder, x)
    columns = {"psnr_clean_undefended": rd.psnr(plain_hat, x), "bpp_clean_undefended": plain_bpp}
    if not adaptive:
        adv_hat = compress_decompress(plain_coder, x_adv)[0]
        columns["psnr_adv_undefended"] = rd.psnr(adv_hat, x)
        columns["vi_undefended"] = rd.vulnerability_index(adv_hat, plain_hat, x_adv, x)
    for i, record in enumerate(records):
        record.update({k: rd.finite_or_none(v[i]) for k, v in columns.items()})
        clean, plain = record["psnr_clean"], record["psnr_clean_undefended"]
        record["psnr_cost"] = None if clean is None or plain is None else plain - clean
        record["bpp_cost"] = record["bpp_clean"] - record["bpp_clean_undefended"]


def add_classical_reference(records: list[dict], x: torch.Tensor) -> None:
    """JPEG and WebP on each clean image at the highest quality within its learned clean rate."""
    matched = matched_reference(x.cpu(), [r["bpp_clean"] for r in records])
    for name, figures in matched.items():
        for record, psnr, bpp in zip(records, figures["psnr"], figures["bpp"], strict=True):
            record.update({f"psnr_{name}": psnr, f"bpp_{name}": bpp})


@torch.no_grad()
def coding_time(coder: torch.nn.Module, image: torch.Tensor) -> tuple[float, float]:
    """Real encode and decode wall time [s] of one image (a batch of one), each the median of repeats."""
    padded, _ = rd.pad(image.to(device_of(coder)), rd.stride(coder))
    encode, decode = [], []
    for _ in range(CODING_REPEATS):
        started = time.perf_counter()
        encoded = coder.compress(padded)
        encode.append(time.perf_counter() - started)
        started = time.perf_counter()
        coder.decompress(encoded["strings"], encoded["shape"])
        decode.append(time.perf_counter() - started)
    return float(np.median(encode)), float(np.median(decode))


def coding_times(coder: torch.nn.Module, x: torch.Tensor, x_adv: torch.Tensor) -> dict:
    """Real encode and decode wall time of one image and its adversarial version (median of repeats)."""
    times = {}
    for kind, image in (("clean", x), ("adv", x_adv)):
        times[f"encode_s_{kind}"], times[f"decode_s_{kind}"] = coding_time(coder, image)
    return times


def ensemble_fields(attack, row: int) -> dict:
    """An ensemble's winner and every member's decoded figures for image `row` of the last batch."""
    if getattr(attack, "last_report", None) is None:  # an ensemble (rnic.attacks.Ensemble) keeps one
        return {}
    report = attack.image_report(row)
    members = {
        name: {k: rd.finite_or_none(v) for k, v in figures.items()}
        for name, figures in report["members"].items()
    }
    members.update({name: {"skipped": True} for name in report["skipped"]})
    return {"winner": report["winner"], "members": members}
