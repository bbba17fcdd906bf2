"""What Prefect's cache saves, side by side in one run: `pretrainflow run` on a fresh copy of
the project, then again with nothing changed, then with only a `finetune.*` change; each
re-run's wall time as a ratio of the first.

    python bench/cache_rerun.py                     # the built-in mnist-5k and params.yaml
    python bench/cache_rerun.py --set pretrain.epochs=5 --change finetune.lr=0.003

Each run is the real command (Prefect's ephemeral API, MLflow on sqlite, DVC) in a temporary
copy of the project with its own data/, stores and caches, so nothing here is touched.
Goal: the unchanged re-run takes at most 10% of the first run's time.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(project: Path, env: dict[str, str], sets: list[str]) -> float:
    argv = [str(Path(sys.executable).parent / "pretrainflow"), "run",
            *(a for s in sets for a in ("--set", s))]
    start = time.perf_counter()
    done = subprocess.run(argv, cwd=project, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="SECTION.KEY=VALUE",
                        help="settings of all three runs (default: params.yaml as it is)")
    parser.add_argument("--change", default="finetune.lr=0.003",
                        help="the finetune.* change of the third run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        project = Path(tmp) / "project"
        project.mkdir()
        for name in ("flows", "pipeline_tasks"):
            shutil.copytree(REPO / name, project / name, ignore=shutil.ignore_patterns("__pycache__"))
        for name in ("params.yaml", "dvc.yaml"):
            shutil.copy(REPO / name, project / name)
        env = {**os.environ, "PREFECT_HOME": str(Path(tmp) / "prefect-home"),
               "MLFLOW_TRACKING_URI": f"sqlite:///{project}/mlflow.db", "PYTHONPATH": str(project)}
        env.pop("PREFECT_API_URL", None)
        subprocess.run([str(Path(sys.executable).parent / "pretrainflow"), "data", "builtin", "mnist-5k"],
                       cwd=project, env=env, check=True, capture_output=True)
        first = run(project, env, args.overrides)
        print(f"first run                        {first:7.1f} s")
        again = run(project, env, args.overrides)
        print(f"re-run, nothing changed          {again:7.1f} s   {again / first:6.1%} of the first "
              "(goal <= 10%)")
        changed = run(project, env, [*args.overrides, args.change])
        print(f"re-run, {args.change:<24} {changed:7.1f} s   {changed / first:6.1%} of the first")


if __name__ == "__main__":
    main()
