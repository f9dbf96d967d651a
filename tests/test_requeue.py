"""A run resumes in its own folder by itself: `ckpt_path=auto`, and a job of a submitit launcher that a
signal (SLURM's timeout or preemption warning) requeues and that reruns in the same folder."""

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import submitit

from rnic.training import train
from tests.conftest import ROOT, TINY, tiny_widths


def test_ckpt_path_auto_resumes_from_the_folders_last_checkpoint_or_starts_fresh(tiny_cfg, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="rnic.run_folder")
    train(tiny_cfg("ckpt_path=auto"))  # nothing to resume: a fresh start
    assert json.loads((tmp_path / "final_metrics.json").read_text())["step"] == 4
    caplog.clear()
    train(tiny_cfg("ckpt_path=auto", "trainer.max_steps=6"))  # the same folder again: its last.ckpt
    assert f"resuming from {tmp_path / 'checkpoints' / 'last.ckpt'} (ckpt_path=auto)" in caplog.text
    assert json.loads((tmp_path / "final_metrics.json").read_text())["step"] == 6
    # Without ckpt_path=auto, the folder stays another run's: refused, the resume named.
    with pytest.raises(ValueError, match=r"holds a run already .* \(or ckpt_path=auto\)"):
        train(tiny_cfg())


def child_pids(pid: int) -> list[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children")
    found = [int(c) for c in children.read_text().split()] if children.exists() else []
    return found + [grandchild for c in found for grandchild in child_pids(c)]


@pytest.mark.slow  # three Python start-ups (Hydra, submitit's controller, the job twice): minutes on 2 cores
def test_a_submitit_job_signalled_mid_training_is_requeued_and_resumes_from_its_checkpoint(tmp_path):
    sweep = tmp_path / "sweep"
    job = sweep / "0"
    args = [*TINY, *tiny_widths([]), "trainer.max_steps=16", "trainer.val_check_interval=16",
            "callbacks.last_checkpoint.every_n_train_steps=2", "callbacks=default"]  # fmt: skip
    process = subprocess.Popen(
        [sys.executable, "train.py", "-m", "hydra/launcher=submitit_local", *args, f"hydra.sweep.dir={sweep}"],  # noqa: E501
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        started = time.monotonic()
        while not (job / "checkpoints" / "last.ckpt").is_file():
            assert process.poll() is None, process.stdout.read()[-3000:]
            assert time.monotonic() - started < 240, "no checkpoint written"
            time.sleep(0.1)
        # The job's own process (the submitit task below its controller) gets the signal that SLURM sends
        # before a timeout or a preemption.
        task = next(p for p in child_pids(process.pid)
                    if b"submitit.core._submit" in Path(f"/proc/{p}/cmdline").read_bytes())  # fmt: skip
        os.kill(task, submitit.JobEnvironment._usr_sig())
        out, _ = process.communicate(timeout=400)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 0, out[-3000:]
    log = (job / "train.log").read_text()
    assert "resuming from" in log and "a job that submitit started again in its folder" in log
    assert json.loads((job / "final_metrics.json").read_text())["step"] == 16
    logs = "".join(p.read_text() for p in sweep.glob(".submitit/*/*_log.*"))
    assert "Requeued job" in logs


@pytest.mark.parametrize("launcher", ["slurm", "slurm_ddp"])
def test_the_slurm_launchers_requeue_a_timed_out_job(tmp_path, launcher):
    from tests.conftest import compose_config

    cfg = compose_config(tmp_path, f"hydra/launcher={launcher}", keep_hydra=True)
    assert cfg.hydra.launcher.max_num_timeout == 3 and cfg.hydra.launcher._target_.endswith("SlurmLauncher")
