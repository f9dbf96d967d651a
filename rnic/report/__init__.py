"""report.py: gather the results of many train.py and attack.py runs into tables, plots and one HTML page.

One module per section: attacks (rnic.report.attacks), training runs (training), defenses (defenses),
the robust-methods study (methods), transfer matrices (transfer) and BD-rate / BD-PSNR (bd); what they
share of a run folder in rnic.report.runs, and the page that puts them together in rnic.report.page.
"""

from rnic.report.page import build_report

__all__ = ["build_report"]
