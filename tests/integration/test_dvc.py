"""`pretrainflow run` leaves `dvc status` clean; `dvc repro` rebuilds deleted artifacts."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, write_tiny_params

pytestmark = pytest.mark.slow


def _sh(repo: Path, *cmd: str) -> str:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "MLFLOW_TRACKING_URI": f"sqlite:///{repo}/mlflow.db", "DVC_NO_ANALYTICS": "1"}
    env.pop("PREFECT_API_URL", None)  # let the CLI start its own ephemeral API, as a user's would
    proc = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def _check_lineage(repo: Path) -> None:
    """The flow's MLflow run names the data version that data.dvc records, as a tag and as
    the digest of its dataset input."""
    import mlflow

    md5 = yaml.safe_load((repo / "data.dvc").read_text())["outs"][0]["md5"]
    client = mlflow.MlflowClient(f"sqlite:///{repo}/mlflow.db")
    exp = client.get_experiment_by_name("pretrainflow")
    found = client.search_runs([exp.experiment_id], "attributes.run_name LIKE 'pretrain-finetune%'")[0]
    parent = client.get_run(found.info.run_id)  # search results leave out dataset inputs
    assert parent.data.tags["data_dvc_md5"] == md5 and parent.data.tags["data_images"] == "120"
    (dataset_input,) = parent.inputs.dataset_inputs
    assert dataset_input.dataset.digest == md5 and dataset_input.dataset.name == "images"
    assert str(repo / "data") in dataset_input.dataset.source


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory, tiny_data: Path) -> Path:
    """A copy of the project (code, dvc.yaml, tiny params.yaml) with its own git + DVC repo."""
    root = tmp_path_factory.mktemp("project")
    for name in ("pipeline_tasks", "flows"):
        shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
    # finetune.lr 0.003, so that `dvc exp run -S finetune.lr=0.01` (the default) is a change
    write_tiny_params(root / "params.yaml", "finetune.lr=0.003")
    shutil.copytree(tiny_data, root / "data")
    _sh(root, "git", "init", "-q")
    _sh(root, sys.executable, "-m", "dvc", "init", "-q")
    return root


def test_run_then_dvc_status_is_clean_and_repro_rebuilds(repo: Path) -> None:
    out = _sh(repo, "pretrainflow", "run")
    assert "test_accuracy" in out and "dvc.lock" in out
    assert (repo / "data.dvc").is_file()  # the run recorded the data version first
    status = _sh(repo, sys.executable, "-m", "dvc", "status")
    assert "up to date" in status, status
    _check_lineage(repo)

    shutil.rmtree(repo / "artifacts")
    _sh(repo, sys.executable, "-m", "dvc", "repro")
    assert (repo / "artifacts" / "metrics.json").is_file()
    assert (repo / "artifacts" / "pretrain" / "encoder.pt").is_file()
    assert "up to date" in _sh(repo, sys.executable, "-m", "dvc", "status")

    # a finetune param changes: DVC runs finetune (and what follows, if its output changed),
    # nothing upstream of it
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["finetune"]["epochs"] = 1
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    out = _sh(repo, sys.executable, "-m", "dvc", "repro")
    ran = {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")}
    assert "finetune" in ran and not ran & {"validate", "preprocess", "pretrain"}, out
    assert "up to date" in _sh(repo, sys.executable, "-m", "dvc", "status")


def test_dvc_exp_run_never_moves_champion(repo: Path) -> None:
    """An experiment registers its classifier and says why it is not champion; the alias stays."""
    import mlflow

    if not (repo / "dvc.lock").is_file():
        _sh(repo, "pretrainflow", "run")
    client = mlflow.MlflowClient(f"sqlite:///{repo}/mlflow.db")
    champion = str(client.get_model_version_by_alias("pretrainflow-classifier", "champion").version)
    (repo / ".gitignore").write_text("/mlflow.db\n/mlartifacts/\n/.cache/\n/data\n")
    _sh(repo, "git", "-c", "user.name=t", "-c", "user.email=t@e", "add", "-A")
    _sh(repo, "git", "-c", "user.name=t", "-c", "user.email=t@e", "commit", "-qm", "baseline")
    out = _sh(repo, sys.executable, "-m", "dvc", "exp", "run", "-S", "finetune.lr=0.01", "-n", "lr-0.01")
    assert "Running stage 'finetune'" in out and "Running stage 'register'" in out, out
    assert "lr-0.01" in _sh(repo, sys.executable, "-m", "dvc", "exp", "show", "--csv")
    metrics = _sh(repo, sys.executable, "-m", "dvc", "metrics", "show")
    assert "test_accuracy" in metrics and "pretraining_lift_points" in metrics and "labels_used" in metrics
    _sh(repo, sys.executable, "-m", "dvc", "plots", "show", "-o", str(repo / "dvc_plots"))
    assert "confusion" in (repo / "dvc_plots" / "index.html").read_text()
    versions = client.search_model_versions("name = 'pretrainflow-classifier'")
    latest = max(versions, key=lambda v: int(v.version))
    assert str(client.get_model_version_by_alias("pretrainflow-classifier", "champion").version) == champion
    assert int(latest.version) > int(champion) and "DVC experiment 'lr-0.01'" in latest.tags["gate_reason"]


def test_import_records_nothing_before_the_gate(tmp_path: Path, tiny_data: Path,
                                                monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """`data import-folder` into the project's data/ copies the images and records nothing: the
    gate comes before anything records the data, and `pretrainflow run` records them after it."""
    from flows.cli.main import main

    _sh(tmp_path, "git", "init", "-q")
    _sh(tmp_path, sys.executable, "-m", "dvc", "init", "-q")
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    monkeypatch.chdir(tmp_path)
    assert main(["data", "import-folder", str(tiny_data), "--limit-per-class", "2"]) == 0
    out = capsys.readouterr().out
    assert "data not recorded yet" in out and "`pretrainflow run`" in out
    assert not (tmp_path / "data.dvc").exists() and not any((tmp_path / ".dvc" / "cache").rglob("*.png"))
    assert sorted(p.name for p in (tmp_path / "data" / "4").iterdir()) == ["02000.png", "02001.png"]


def _snapshot(folder: Path) -> dict[str, tuple[bool, str | bytes]]:
    """Every entry: symlinks by their target, files by their bytes."""
    return {str(p.relative_to(folder)): (True, os.readlink(p)) if p.is_symlink() else (False, p.read_bytes())
            for p in sorted(folder.rglob("*")) if p.is_symlink() or p.is_file()}


def test_a_symlink_in_a_tracked_folder_is_refused_before_dvc_add(tmp_path: Path, tiny_data: Path) -> None:
    """Trust issue: `dvc add` ran before the gate and replaced a link to a file outside the project
    with a copy of it, which was then trained on."""
    root = tmp_path / "project"
    for name in ("pipeline_tasks", "flows"):
        shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
    write_tiny_params(root / "params.yaml")
    shutil.copytree(tiny_data, root / "data")
    _sh(root, "git", "init", "-q")
    _sh(root, sys.executable, "-m", "dvc", "init", "-q")
    _sh(root, sys.executable, "-m", "dvc", "add", "-q", "data")
    secret = tmp_path / "outside" / "secret.png"
    secret.parent.mkdir()
    shutil.copy(next((tiny_data / "7").iterdir()), secret)
    (root / "data" / "3" / "link.png").symlink_to(secret)
    before, tracked = _snapshot(root / "data"), (root / "data.dvc").read_text()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "MLFLOW_TRACKING_URI": f"sqlite:///{root}/mlflow.db", "DVC_NO_ANALYTICS": "1"}
    env.pop("PREFECT_API_URL", None)
    run = subprocess.run(["pretrainflow", "run"], cwd=root, env=env, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 1 and "3/link.png" in run.stderr and "dvc add" in run.stderr, run.stderr[-2000:]
    assert _snapshot(root / "data") == before  # still a link, nothing copied or rewritten
    assert (root / "data.dvc").read_text() == tracked  # nothing recorded


def test_an_image_edited_in_place_keeps_its_recorded_version(tmp_path: Path, tiny_data: Path) -> None:
    """An image edited in place (as root, who may write a read-only file) inside a DVC-tracked
    folder: with the project's .dvc/config the cache keeps its own copy, so `dvc status` sees
    the change and `dvc checkout --force` brings the recorded bytes back (with hardlinks the
    edit rewrote the cache object and the version was lost)."""
    from flows.tracking.dvc import record_data_version

    project = tmp_path / "project"
    shutil.copytree(tiny_data, project / "data")
    _sh(project, "git", "init", "-q")
    _sh(project, sys.executable, "-m", "dvc", "init", "-q")
    shutil.copy(REPO / ".dvc" / "config", project / ".dvc" / "config")
    image = next((project / "data" / "3").iterdir())
    recorded = image.read_bytes()
    cwd = Path.cwd()
    os.chdir(project)
    try:
        record_data_version("data")
    finally:
        os.chdir(cwd)
    shutil.rmtree(project / "data")  # the folder as a teammate's `dvc pull` or `dvc checkout` makes it
    _sh(project, sys.executable, "-m", "dvc", "checkout", "data.dvc")
    os.chmod(image, 0o644)  # what an editor running as root does to a read-only file anyway
    with open(image, "r+b") as f:  # in place: the same inode
        f.seek(len(recorded) // 2)
        f.write(b"\xff" * 16)
    assert image.read_bytes() != recorded
    assert "modified" in _sh(project, sys.executable, "-m", "dvc", "status", "data.dvc")
    _sh(project, sys.executable, "-m", "dvc", "checkout", "--force", "data.dvc")
    assert image.read_bytes() == recorded
