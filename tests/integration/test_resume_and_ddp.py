"""Pretraining survives SIGKILL and resumes; `torchrun --nproc-per-node 2` (gloo, CPU) trains
like one process with the same global batch."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from pipeline_tasks.config import PipelineConfig, PretrainConfig
from pipeline_tasks.data.preprocess import PreprocessRecord
from pipeline_tasks.ssl.checkpoint import LAST
from tests.conftest import free_port, write_tiny_params

pytestmark = pytest.mark.slow

SCRIPT = '''
import json, logging, os, sys
logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")
if os.environ.get("DEBUG_LOG"):
    logging.getLogger("pipeline_tasks").setLevel(logging.DEBUG)
from pipeline_tasks.config import PretrainConfig
from pipeline_tasks.ssl.trainer import pretrain_encoder
losses = {}
cfg = PretrainConfig.model_validate_json(sys.argv[1])
rec = pretrain_encoder(sys.argv[2], cfg, sys.argv[3], checkpoint_dir=sys.argv[4],
                       log_metrics=lambda m, step: losses.setdefault(step, m.get("pretrain_loss")))
if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 logs (the others have no metrics)
    print("RECORD " + json.dumps({"resumed": rec.resumed_at_epoch, "loss": rec.final_loss,
                                  "first": losses.get(0)}))
'''


def _env() -> dict[str, str]:
    root = str(Path(__file__).resolve().parents[2])
    return {**os.environ, "PYTHONPATH": root, "OMP_NUM_THREADS": "1"}


def _record(stdout: str) -> dict[str, Any]:
    line = next(x for x in stdout.splitlines() if x.startswith("RECORD "))
    return dict(json.loads(line[len("RECORD "):]))


def test_sigkill_after_a_checkpoint_then_resume(pre: PreprocessRecord, tiny_cfg: PipelineConfig,
                                                tmp_path: Path) -> None:
    cfg = tiny_cfg.pretrain.model_copy(update={"epochs": 30, "knn_every_epochs": 0,
                                               "checkpoint_every_steps": 1})
    ckpt, script = tmp_path / "ckpt", tmp_path / "run.py"
    script.write_text(SCRIPT)
    argv = [sys.executable, str(script), cfg.model_dump_json(), pre.out_dir, str(tmp_path / "out"), str(ckpt)]
    proc = subprocess.Popen(argv, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while not (ckpt / LAST).exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read() if proc.stdout else ""
        time.sleep(0.02)
    for _ in range(10):  # read while the run rewrites it: always a whole checkpoint
        assert torch.load(ckpt / LAST, weights_only=True)["fingerprint"]
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    killed = torch.load(ckpt / LAST, weights_only=True)
    assert killed["step"] < 30 * 2, "the run finished before it was killed"
    assert not (tmp_path / "out" / "encoder.pt").exists()

    again = subprocess.run(argv, env=_env(), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert f"resuming from {ckpt / LAST}: epoch {killed['epoch'] + 1}" in again.stdout
    resumed = _record(again.stdout)
    assert resumed["resumed"] is not None and (tmp_path / "out" / "encoder.pt").is_file()
    # the same numbers as a run that was never interrupted
    whole = subprocess.run([*argv[:4], str(tmp_path / "whole"), str(tmp_path / "whole-ckpt")], env=_env(),
                           capture_output=True, text=True, timeout=300)
    assert resumed["loss"] == _record(whole.stdout)["loss"]


def test_torchrun_two_processes_match_one(pre: PreprocessRecord, tiny_cfg: PipelineConfig,
                                          tmp_path: Path) -> None:
    cfg = tiny_cfg.pretrain.model_copy(update={"epochs": 1, "batch_size": 32, "knn_every_epochs": 0})
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    args = [str(script), cfg.model_dump_json(), pre.out_dir]
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                          "--master-addr", "127.0.0.1", "--master-port", str(free_port()), *args,
                          str(tmp_path / "ddp"), str(tmp_path / "ddp-ckpt")],
                         env=_env(), capture_output=True, text=True, timeout=300)
    assert ddp.returncode == 0, ddp.stdout[-3000:] + ddp.stderr[-3000:]
    one = subprocess.run([sys.executable, *args, str(tmp_path / "one"), str(tmp_path / "one-ckpt")],
                         env=_env(), capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stdout[-3000:] + one.stderr[-3000:]
    assert "batch 32 over 2 rank(s)" in ddp.stdout and "batch 32 over 1 rank(s)" in one.stdout
    # Each embedding met the 2 * 32 - 1 others of the global batch: NT-Xent of a fresh network is
    # about log(63) = 4.14 in both runs (measured 4.08 and 4.12); negatives from its own rank only
    # gave 3.35 (log(31) = 3.43). The two runs are not expected to agree further: on CPUs each
    # rank normalises its own half batch and draws its own views (SyncBatchNorm needs GPUs); that
    # the loss over ranks is one process's loss, to float precision, is tests/unit/test_losses.py's.
    for run in (ddp, one):
        assert abs(_record(run.stdout)["first"] - math.log(63)) < 0.15, _record(run.stdout)
    assert not list((tmp_path / "ddp-ckpt").glob("*"))  # nothing left: a finished run retires its checkpoint
    assert (tmp_path / "ddp" / "encoder.pt").is_file()


def test_torchrun_runs_the_pretrain_stage_from_the_cli(tiny_data: Path, tmp_path: Path) -> None:
    """What a user types: rank 0 alone logs to MLflow and writes the encoder and checkpoints."""
    import shutil

    import mlflow

    write_tiny_params(tmp_path / "params.yaml", "pretrain.epochs=2")
    shutil.copytree(tiny_data, tmp_path / "data")
    bin_dir = Path(sys.executable).parent
    env = {**_env(), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db",
           "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    for stage in ("validate", "preprocess", "start"):
        done = subprocess.run(["pretrainflow", "stage", stage], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
    torchrun = [str(bin_dir / "torchrun"), "--no-python", "--nproc-per-node", "2",
                "--master-addr", "127.0.0.1", "--master-port", str(free_port())]
    ddp = subprocess.run([*torchrun, "pretrainflow", "stage", "pretrain"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=600)
    assert ddp.returncode == 0, ddp.stdout[-3000:] + ddp.stderr[-3000:]
    assert (tmp_path / "artifacts" / "pretrain" / "encoder.pt").is_file()
    assert not list((tmp_path / "artifacts" / "checkpoints" / "pretrain").glob("*"))  # retired when done
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.get_experiment_by_name("pretrainflow")
    runs = client.search_runs([experiment.experiment_id], "tags.`pretrainflow.stage` = 'pretrain'")
    n_train = json.loads((tmp_path / "artifacts" / "preprocessed" / "splits.json").read_text())["n_train"]
    assert len(runs) == 1 and runs[0].data.metrics["pretrain_images"] == n_train  # one run, from rank 0


def _torchrun(tmp_path: Path, cfg: PretrainConfig, pre: str, name: str) -> list[str]:
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
            "--master-addr", "127.0.0.1", "--master-port", str(free_port()), str(script),
            cfg.model_dump_json(), pre, str(tmp_path / name), str(tmp_path / "ckpt")]


def _wait_for(path: Path, proc: subprocess.Popen[str], seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read() if proc.stdout else ""
        time.sleep(0.05)


def _ranks(tmp_path: Path) -> dict[int, int]:
    """rank -> pid of the torchrun workers running the script in ``tmp_path`` (torchrun starts
    them in sessions of their own, so killing the launcher's group would not reach them)."""
    ranks = {}
    for child in Path("/proc").glob("[0-9]*"):
        try:
            env = dict(v.split("=", 1) for v in (child / "environ").read_text().split("\0") if "=" in v)
            if str(tmp_path) in (child / "cmdline").read_text() and "RANK" in env:
                ranks[int(env["RANK"])] = int(child.name)
        except OSError:
            continue
    assert set(ranks) == {0, 1}, ranks
    return ranks


def test_torchrun_resume_after_sigkill_gives_each_rank_its_own_stream(
        pre: PreprocessRecord, tiny_cfg: PipelineConfig, tmp_path: Path) -> None:
    import hashlib

    cfg = tiny_cfg.pretrain.model_copy(update={"epochs": 40, "batch_size": 16, "knn_every_epochs": 0,
                                               "checkpoint_every_steps": 2})
    argv = _torchrun(tmp_path, cfg, pre.out_dir, "out")
    proc = subprocess.Popen(argv, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _wait_for(tmp_path / "ckpt" / LAST, proc)
    time.sleep(0.5)
    for pid in [proc.pid, *_ranks(tmp_path).values()]:  # the whole job: launcher and both ranks
        os.kill(pid, signal.SIGKILL)
    proc.wait(timeout=30)
    state = torch.load(tmp_path / "ckpt" / LAST, weights_only=True)
    saved = [hashlib.sha256(s.numpy().tobytes()).hexdigest()[:12] for s in state["augment_rng"]]
    assert len(saved) == 2 and saved[0] != saved[1]  # one augmentation stream per rank

    again = subprocess.run(argv, env={**_env(), "DEBUG_LOG": "1"}, capture_output=True, text=True,
                           timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    out = again.stdout + again.stderr
    resumed = {int(r): d for r, d in re.findall(r"rank (\d) resumes its augmentation stream (\w+)", out)}
    assert resumed == {0: saved[0], 1: saved[1]}  # each rank restored its own state, not rank 0's


def test_killing_one_rank_ends_the_other_promptly(pre: PreprocessRecord, tiny_cfg: PipelineConfig,
                                                   tmp_path: Path) -> None:
    cfg = tiny_cfg.pretrain.model_copy(update={"epochs": 200, "batch_size": 16, "knn_every_epochs": 0,
                                               "checkpoint_every_steps": 2})
    proc = subprocess.Popen(_torchrun(tmp_path, cfg, pre.out_dir, "out"), env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    _wait_for(tmp_path / "ckpt" / LAST, proc)
    ranks = _ranks(tmp_path)
    os.kill(ranks[1], signal.SIGKILL)
    killed = time.monotonic()
    out, _ = proc.communicate(timeout=120)
    assert time.monotonic() - killed < 60 and proc.returncode != 0
    assert "rank" in out and ("SIGKILL" in out or "Signal 9" in out), out[-2000:]


def test_a_checkpoint_of_one_process_is_not_resumed_by_two(pre: PreprocessRecord, tiny_cfg: PipelineConfig,
                                                          tmp_path: Path) -> None:
    """Each rank's augmentation stream is saved per rank: a checkpoint written by one process
    cannot be continued by two (it failed with an IndexError); torchrun starts afresh and says why."""
    cfg = tiny_cfg.pretrain.model_copy(update={"epochs": 30, "knn_every_epochs": 0,
                                               "checkpoint_every_steps": 1, "batch_size": 32})
    ckpt, script = tmp_path / "ckpt", tmp_path / "run.py"
    script.write_text(SCRIPT)
    args = [str(script), cfg.model_dump_json(), pre.out_dir, str(tmp_path / "out"), str(ckpt)]
    proc = subprocess.Popen([sys.executable, *args], env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (ckpt / LAST).exists():
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                          "--master-addr", "127.0.0.1", "--master-port", str(free_port()), *args],
                         env=_env(), capture_output=True, text=True, timeout=600)
    assert ddp.returncode == 0, ddp.stdout[-3000:] + ddp.stderr[-3000:]
    assert "another number of processes (world size); starting fresh" in ddp.stdout
    assert _record(ddp.stdout)["resumed"] is None and (tmp_path / "out" / "encoder.pt").is_file()
