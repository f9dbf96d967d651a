"""attack.py's evaluation: the job (`job.evaluate_robustness`: attack, code for real, record), the
per-image records and their means (records), the coded pairs (pairs), the console tables (console), the
image panels (panels) and the run card with its checks (card, checks)."""


def __getattr__(name: str):
    # The job imports torch, Lightning and the codecs; report.py --check reads cards without them.
    if name == "evaluate_robustness":
        from rnic.evaluation.job import evaluate_robustness

        return evaluate_robustness
    raise AttributeError(f"module 'rnic.evaluation' has no attribute {name!r}")


__all__ = ["evaluate_robustness"]
