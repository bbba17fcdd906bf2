"""``pretrainflow``: run the flow, one stage, data commands, predict, serve, ui.

Failures a user can cause (bad params, a wrong path, data that fails validation, a stopped
server) end with one message naming the thing, the check and the fix, and exit status 2
(usage or config) or 1 (data or run failure); never a bare traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence

from flows.cli.errors import UserError
from flows.orchestration import graph
from pipeline_tasks.recipes import PRESETS, with_preset

# Before prefect is imported: no analytics calls offline, and the stages' epoch logs shown.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "pipeline_tasks")
# Prefect's temporary API (no PREFECT_API_URL) gets 20 s to answer by default; on a busy 2-core
# machine it needed more, and the run failed before its first stage. 120 s costs nothing when it
# is quick.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
# That API, and the servers of `pretrainflow ui`, are on this machine: never reached through a
# proxy (HTTP(S)_PROXY without NO_PROXY sent Prefect's health checks to the proxy, and the run
# never started).
_hosts = [*os.environ.get("NO_PROXY", "").split(","), *os.environ.get("no_proxy", "").split(","),
          "127.0.0.1", "localhost"]
_local = ",".join(dict.fromkeys(h for h in _hosts if h))
os.environ["NO_PROXY"] = os.environ["no_proxy"] = _local


def _params_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    p.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="a recipe of settings over the params file (each --set still wins); "
                        + "; ".join(f"{name}: {' '.join(sets)}" for name, sets in PRESETS.items()))
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one param, e.g. --set pretrain.epochs=2 (repeatable)")
    p.add_argument("--allow-download", action="store_true",
                   help="fetch weights by name (pretrain.init torchvision:, timm:, hf-hub:) missing from "
                        "their cache (= --set pretrain.allow_download=true)")


def _expand(args: argparse.Namespace) -> None:
    """--preset and --allow-download as the overrides they stand for: the preset's first, then
    each --set, then the download switch; the flow, the stages and MLflow see only overrides."""
    if hasattr(args, "overrides"):
        download = ["pretrain.allow_download=true"] if args.allow_download else []
        args.overrides = with_preset(args.preset, [*args.overrides, *download])


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a TCP port is a number from 1 to 65535, got {text!r}")
    return value


def _split_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--labeled-per-class", type=_positive, default=None, metavar="N",
                   help="keep the label of N images per class; write the rest, without labels, "
                        "to --unlabeled-out as the pool for pretraining")
    p.add_argument("--unlabeled-out", default="unlabeled",
                   help="the unlabeled pool's folder (default: unlabeled); see data.unlabeled_dir")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pretrainflow",
        description="Self-supervised pretraining + fine-tuning on few labels, orchestrated by "
                    "Prefect, tracked in MLflow, versioned with DVC, gated by Great Expectations.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the whole pipeline as the Prefect flow 'pretrain-finetune'")
    _params_arg(run)
    run.add_argument("--data-dir", help="image folder laid out as <class>/<image> (default: data.dir)")
    run.add_argument("--no-cache", action="store_true", help="rerun every stage, ignoring Prefect's cache")
    stage = sub.add_parser("stage", help="run one stage (what dvc.yaml calls)")
    stage.add_argument("name", choices=graph.NAMES)
    _params_arg(stage)
    _data_parsers(sub.add_parser("data", help="create or import the image folder"))
    predict = sub.add_parser("predict", help="classify image files with a registered model")
    predict.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders")
    predict.add_argument("--model-uri", default="models:/pretrainflow-classifier@champion")
    predict.add_argument("--output", help="write predictions to this CSV instead of stdout")
    _serve_parser(sub.add_parser("serve", help="serve the flow as a Prefect deployment with a schedule"))
    _ui_parser(sub.add_parser("ui", help="start local Prefect and MLflow servers and print their URLs"))
    return parser


def _data_parsers(data: argparse.ArgumentParser) -> None:
    dsub = data.add_subparsers(dest="data_command", required=True)
    builtin = dsub.add_parser("builtin", help="write a built-in dataset (offline)")
    builtin.add_argument("name", choices=["mnist-5k"])
    builtin.add_argument("--out", default="data", help="destination folder (default: data)")
    builtin.add_argument("--limit-per-class", type=int, default=None, metavar="N")
    _split_args(builtin)
    folder = dsub.add_parser("import-folder",
                             help="copy a <class>/<image> tree (never moved)")
    folder.add_argument("path", help="source folder, one sub-folder per class")
    folder.add_argument("--out", default="data", help="destination folder (default: data)")
    folder.add_argument("--limit-per-class", type=int, default=None, metavar="N",
                        help="copy at most N images per class (the first in path order)")
    idx = dsub.add_parser("import-idx", help="import MNIST-format idx files (gzipped or not)")
    idx.add_argument("files", nargs="+", metavar="IMAGES LABELS | FOLDER",
                     help="pairs of images/labels idx files, or one folder holding *-images-idx3-ubyte[.gz] "
                          "and *-labels-idx1-ubyte[.gz] (e.g. /usr/share/datasets/fashion-mnist)")
    idx.add_argument("--out", default="data", help="destination folder (default: data)")
    idx.add_argument("--limit-per-class", type=int, default=None, metavar="N")
    idx.add_argument("--class-names", default=None, metavar="A,B,...",
                     help="folder name for label 0, 1, ... (default: the label number)")
    _split_args(idx)
    pool = dsub.add_parser("import-unlabeled",
                           help="copy images without labels (any folder layout) as the unlabeled pool "
                                "(`pretrainflow run` records it with dvc add once it passes the gate)")
    pool.add_argument("path", help="source folder; every image under it is copied (never moved)")
    pool.add_argument("--out", default="unlabeled", help="destination folder (default: unlabeled)")
    _suggest_parser(dsub.add_parser(
        "suggest-labels", help="pick N pool images worth labelling (the most typical image of each of N "
                               "k-means clusters of the encoder's embeddings) and copy them to --out"))


def _suggest_parser(suggest: argparse.ArgumentParser) -> None:
    suggest.add_argument("n", type=_positive, metavar="N", help="how many images to label")
    suggest.add_argument("--pool", default=None, metavar="DIR",
                         help="the unlabeled images, any layout (default: data.unlabeled_dir)")
    suggest.add_argument("--encoder", default="artifacts/pretrain/encoder.pt", metavar="PATH",
                         help="the pretrained encoder (default: artifacts/pretrain/encoder.pt)")
    suggest.add_argument("--out", default="to_label",
                         help="where the copies, suggestions.csv and contact_sheet.png go; absent or empty "
                              "(default: to_label)")
    suggest.add_argument("--seed", type=int, default=0, help="k-means seed (default: 0)")
    _params_arg(suggest)


def _serve_parser(serve: argparse.ArgumentParser) -> None:
    serve.add_argument("--cron", default=None, help="cron schedule, e.g. '0 3 * * *' (default: none)")
    serve.add_argument("--timezone", default=None, metavar="TZ",
                       help="the schedule's IANA timezone, e.g. Europe/Paris (default: this machine's)")
    _params_arg(serve)


def _ui_parser(ui: argparse.ArgumentParser) -> None:
    ui.add_argument("--prefect-port", type=_port, default=4200, help="Prefect UI and API (default: 4200)")
    ui.add_argument("--mlflow-port", type=_port, default=5000, help="MLflow UI and API (default: 5000)")
    ui.add_argument("--host", default="127.0.0.1",
                    help="address both servers listen on (default: 127.0.0.1, this machine only; "
                         "0.0.0.0: every interface)")
    ui.add_argument("--mlflow-jobs", action="store_true",
                    help="start MLflow's job runner too (GenAI scorer jobs; ~8 more processes)")


def _handler(command: str) -> Callable[[argparse.Namespace], int]:
    # Heavy imports only after argument parsing. `ui` only supervises two servers: it skips
    # flows.cli.commands (torch, mlflow, GX: ~4 s and ~0.7 GB) for the whole time the servers run.
    if command == "ui":
        from flows.cli.servers import cmd_ui  # noqa: PLC0415

        return cmd_ui
    from flows.cli import commands  # noqa: PLC0415

    return {"run": commands.cmd_run, "stage": commands.cmd_stage, "data": commands.cmd_data,
            "predict": commands.cmd_predict, "serve": commands.cmd_serve}[command]


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _expand(args)
    logging.getLogger("pipeline_tasks").setLevel(logging.INFO)  # epoch lines in Prefect's log
    try:
        return _handler(args.command)(args)
    except UserError as exc:
        print(f"pretrainflow {args.command}: error: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
