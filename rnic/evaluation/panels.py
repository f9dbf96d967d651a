"""The PNG figures attack.py writes beside its results: one panel per image (source, adversarial image,
perturbation, both reconstructions), and with several budgets the robustness curve across them."""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

from rnic.classical import to_uint8
from rnic.io import write_png


def _fmt(value: float | None, none: str = "n/a") -> str:
    return none if value is None else f"{value:.2f}"


def save_panel(path: Path, name: str, x, x_adv, clean_hat, adv_hat, record: dict) -> None:
    delta = x_adv - x
    gain = 0.5 / max(float(delta.abs().max()), 1e-8)
    panels = [
        (x, "source"),
        (x_adv, f"adversarial ({_fmt(record['psnr_in'], 'inf')} dB)"),
        (0.5 + gain * delta, f"perturbation x{gain:.0f}"),
        (clean_hat, f"clean rec. {_fmt(record['psnr_clean'])} dB, {record['bpp_clean']:.3f} bpp"),
        (adv_hat, f"adv. rec. {_fmt(record['psnr_adv'])} dB, {record['bpp_adv']:.3f} bpp"),
    ]
    figure = Figure(figsize=(20, 4.6), layout="constrained")
    axes = figure.subplots(1, 5)
    for axis, (image, title) in zip(axes, panels, strict=True):
        axis.imshow(to_uint8(image[0]))
        axis.set_title(title, fontsize=10)
        axis.axis("off")
    figure.suptitle(f"{name}: VI {_fmt(record['vi'])} dB")
    write_png(path, figure, dpi=80)


def save_curve(path: Path, curve: list[dict], title: str) -> None:
    points = sorted((c for c in curve if c["psnr_in"] is not None), key=lambda c: c["psnr_in"])
    psnr_in = [c["psnr_in"] for c in points]
    figure = Figure(figsize=(11, 4), layout="constrained")
    left, right = figure.subplots(1, 2)
    left.plot(psnr_in, [c["psnr_adv"] for c in points], "o-", label="attacked")
    left.plot(psnr_in, [c["psnr_clean"] for c in points], "s--", label="clean")
    left.set(xlabel="input PSNR [dB] (adversarial vs source)", ylabel="reconstruction PSNR [dB]")
    left.legend()
    right.plot(psnr_in, [c["vi"] for c in points], "o-")
    right.set(xlabel="input PSNR [dB] (adversarial vs source)", ylabel="vulnerability index VI [dB]")
    for axis in (left, right):
        axis.grid(alpha=0.3)
    figure.suptitle(title)
    write_png(path, figure, dpi=80)
