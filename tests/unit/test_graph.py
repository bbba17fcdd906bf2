"""The stage graph exists once (flows/orchestration/graph.py): dvc.yaml, the flow's order, the CLI's choices,
the cache keys, the artifact paths and docker/multigpu.sh must agree with it."""

from __future__ import annotations

import argparse
import re

import pytest
import yaml

from flows.cli.main import build_parser
from flows.orchestration import graph
from flows.orchestration.tasks import COMPUTE_STAGES
from flows.stages.artifacts import ArtifactPaths
from flows.stages.runners import runner
from pipeline_tasks.config import load_config
from tests.conftest import PARAMS, REPO


def test_dvc_yaml_is_the_rendered_graph() -> None:
    assert (REPO / "dvc.yaml").read_text() == graph.render_dvc_yaml(), \
        "dvc.yaml differs from the graph: regenerate it with `python -m flows.orchestration.graph > dvc.yaml`"


def test_dvc_reads_the_rendered_file_as_the_graph_says() -> None:
    stages = yaml.safe_load(graph.render_dvc_yaml())["stages"]
    assert list(stages) == list(graph.NAMES)
    for s in graph.STAGES:
        assert stages[s.name]["cmd"] == f"pretrainflow stage {s.name}"
        assert stages[s.name]["params"] == list(s.params)
    params = yaml.safe_load(PARAMS.read_text())
    for name in ("validate", "preprocess"):  # the data folder is the parameter, not its value
        deps = stages[name]["deps"]
        assert "${data.dir}" in deps and params["data"]["dir"] not in deps


def test_a_stage_depends_on_every_module_it_imports() -> None:
    # the closure follows imports from the stage's runner: finetune reaches the cache and the
    # encoders through train.py, and what decides which files it reads (artifacts.py)
    files = graph.code_files("finetune")
    assert {"pipeline_tasks/data/cache.py", "pipeline_tasks/models/encoders.py",
            "flows/stages/finetune.py", "flows/stages/artifacts.py", "pipeline_tasks/config.py"} <= set(files)
    assert "pipeline_tasks/ssl/trainer.py" not in files  # not another stage's code
    assert "flows/stages/artifacts.py" in graph.code_files("evaluate")  # it picks the model evaluated
    assert "flows/registry/register.py" in graph.code_files("register")


def test_only_code_that_computes_a_stage_is_its_code() -> None:
    """Changing what is logged, how a chart looks or how the encoder is registered retrains
    nothing: tracking, orchestration, the charts and the encoder's registration are no code of
    pretraining, while the picture pretraining draws (its views) is."""
    files = set(graph.code_files("pretrain"))
    assert "pipeline_tasks/evaluation/grids.py" in files and "flows/stages/pretrain.py" in files
    recording = {"flows/tracking/runs.py", "flows/tracking/dvc.py", "flows/orchestration/graph.py",
                 "flows/registry/encoders.py", "pipeline_tasks/evaluation/plots.py"}
    assert not files & recording, files & recording
    orchestration = ("flows/orchestration/", "flows/cli/", "flows/tracking/")
    assert not any(f.startswith(orchestration) for s in graph.NAMES for f in graph.code_files(s))


def test_the_flow_the_cli_and_the_runners_follow_the_graph() -> None:
    assert COMPUTE_STAGES == graph.NAMES[1:-1]
    assert all(runner(name).__name__ == f"run_{name}" for name in graph.NAMES)
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    stage = sub.choices["stage"]
    assert tuple(next(a for a in stage._actions if a.dest == "name").choices) == graph.NAMES


def test_artifact_paths_are_the_graphs_outputs() -> None:
    paths = ArtifactPaths(REPO / graph.ARTIFACTS)
    folders = (paths.validation, paths.preprocessed, paths.start, paths.pretrain, paths.finetune, paths.pool,
               paths.metrics, paths.registered)
    outs = {str(p.relative_to(REPO)) for p in folders}
    declared = {o for s in graph.STAGES for o in (*s.outs, *s.metrics, *s.untracked_outs)}
    assert outs == declared
    assert all(p.startswith(str(paths.plots.relative_to(REPO))) for s in graph.STAGES for p in s.plots)


# One valid change per params entry a stage may read.
CHANGE = {"data": "data.limit_per_class=3", "validate": "validate.min_width=9",
          "preprocess": "preprocess.seed=7", "pretrain": "pretrain.epochs=3",
          "pretrain.init": "pretrain.init=x.pt", "finetune": "finetune.lr=0.5",
          "pretrain.start": "pretrain.start=scratch", "pretrain.encoder": "pretrain.encoder=resnet18",
          "finetune.label_fraction": "finetune.label_fraction=0.5",
          "finetune.labels_per_class": "finetune.labels_per_class=3",
          "finetune.val_per_class": "finetune.val_per_class=3",
          "finetune.seed": "finetune.seed=3",
          "finetune.augment": "finetune.augment=objects",
          "pool": "pool.steps=7", "evaluate": "evaluate.batch_size=7",
          "register": "register.min_improvement=0.5"}


@pytest.mark.parametrize("stage", [s.name for s in graph.STAGES if s.name not in ("validate", "register")])
def test_the_cache_key_reads_the_params_dvc_reads(stage: str) -> None:
    """Changing a key the stage reads (even a single key of another section, such as
    finetune's pretrain.init) changes its key; a key it does not read leaves it alone."""
    base = load_config(PARAMS)
    params = graph.BY_NAME[stage].params
    for entry in params:
        changed = load_config(PARAMS, [CHANGE[entry]])
        assert changed.section_digest(*params) != base.section_digest(*params), entry
    unread = load_config(PARAMS, [CHANGE["register"]])
    assert unread.section_digest(*params) == base.section_digest(*params)


def test_multigpu_script_runs_the_graphs_order() -> None:
    script = (REPO / "docker" / "multigpu.sh").read_text()
    commands = "\n".join(line for line in script.splitlines() if not line.lstrip().startswith("#"))
    order = [m.group(1) for m in re.finditer(r"pretrainflow stage (\w+)", commands)]
    assert list(dict.fromkeys(order)) == list(graph.NAMES)


def test_the_cache_key_reads_the_starting_weights_content() -> None:
    """``pretrain.init: models:/pretrainflow-encoder/latest`` names another file once a new
    encoder is registered: the stages that read it (pretrain, finetune) key on the file's
    sha256, the others do not."""
    from flows.orchestration.tasks import cache_key

    cfg = load_config(PARAMS, ["pretrain.init=models:/pretrainflow-encoder/latest"])
    for stage in ("pretrain", "finetune"):
        assert cache_key(stage, cfg, "a" * 64) != cache_key(stage, cfg, "b" * 64), stage
    for stage in ("preprocess", "pool", "evaluate"):
        assert cache_key(stage, cfg, "a" * 64) == cache_key(stage, cfg, "b" * 64), stage


@pytest.mark.parametrize(("argv", "recorded"), [
    ([], True), (["--data-dir", "elsewhere"], False), (["--set", "finetune.lr=0.5"], False),
    (["--preset", "objects"], False), (["--params", "other.yaml"], False)])
def test_only_a_run_of_params_yaml_as_is_records_dvc_lock(argv: list[str], recorded: bool,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """dvc.lock says which data and params made the outputs: a run of other data (--data-dir),
    params or a preset must not record its outputs there."""
    from flows.cli.commands import _as_dvc_repro_runs, _config
    from flows.cli.main import _expand

    monkeypatch.chdir(REPO)
    args = build_parser().parse_args(["run", *argv])
    _expand(args)
    cfg = load_config(PARAMS, [*args.overrides, *([f"data.dir={args.data_dir}"] if args.data_dir else [])])
    if args.params == "params.yaml":
        assert cfg == _config(args, args.data_dir)
    assert _as_dvc_repro_runs(args, cfg) is recorded
