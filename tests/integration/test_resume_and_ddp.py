"""Pretraining survives SIGKILL and resumes; `torchrun --nproc-per-node 2` (gloo, CPU) trains
like one process with the same global batch."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from pipeline_tasks.config import PipelineConfig
from pipeline_tasks.data.preprocess import PreprocessRecord
from pipeline_tasks.ssl.checkpoint import LAST
from tests.conftest import free_port, write_tiny_params

pytestmark = pytest.mark.slow

SCRIPT = '''
import json, logging, os, sys
logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")
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
    first_ddp, first_one = _record(ddp.stdout)["first"], _record(one.stdout)["first"]
    assert abs(first_ddp - first_one) / first_one < 0.05, (first_ddp, first_one)
    assert sorted(p.name for p in (tmp_path / "ddp-ckpt").iterdir()) == [LAST]  # rank 0 only
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
    for stage in ("validate", "preprocess"):
        done = subprocess.run(["pretrainflow", "stage", stage], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
    torchrun = [str(bin_dir / "torchrun"), "--no-python", "--nproc-per-node", "2",
                "--master-addr", "127.0.0.1", "--master-port", str(free_port())]
    ddp = subprocess.run([*torchrun, "pretrainflow", "stage", "pretrain"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=600)
    assert ddp.returncode == 0, ddp.stdout[-3000:] + ddp.stderr[-3000:]
    assert (tmp_path / "artifacts" / "pretrain" / "encoder.pt").is_file()
    assert [p.name for p in (tmp_path / "artifacts" / "checkpoints" / "pretrain").iterdir()] == [LAST]
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.get_experiment_by_name("pretrainflow")
    runs = client.search_runs([experiment.experiment_id], "attributes.run_name = 'pretrain'")
    assert len(runs) == 1 and runs[0].data.metrics["pretrain_images"] == 90  # one run, from rank 0
