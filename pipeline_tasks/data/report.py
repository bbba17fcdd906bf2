"""The gate's report: what ``report.json`` says, and the message a user sees when it closes.
Each failure names the check, what was observed, up to ``MAX_OFFENDERS`` offending files or
classes, and the fix."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from pipeline_tasks.data.nearcopy import groups

MAX_OFFENDERS = 10


# What to do about the rows each expectation flags, by column.
_FIXES = {
    "refused_link": "replace these links with copies of the files, or remove them (the data folder was "
                    "not modified)",
    "bad_name": "rename these files (or folders) to UTF-8 names, e.g. `convmv -f latin1 -t utf8 -r --notest "
                "DIR`; the data folder was not modified",
    "path_clash": "these paths differ only by upper/lower case or Unicode form (NFC/NFD), so on macOS and "
                  "Windows one file overwrites the other: rename or remove one of each pair",
    "decodes": "these files are not readable images: replace them or move them out of the data folder",
    "format": "convert these files to an allowed format or extend validate.allowed_formats",
    "width": "these images are too small: remove them or lower validate.min_width",
    "height": "these images are too small: remove them or lower validate.min_height",
    "label_conflict": "the same picture (an exact or near copy: resized, re-encoded, turned by a quarter "
                      "turn or a half turn, or mirrored; a cropped copy is not recognised) is filed "
                      "under two classes: keep only the copy in the right class",
    "n_images": "add images to these classes, remove the folders, or lower validate.min_images_per_class",
    "imbalance": "add images to the small classes or raise validate.max_imbalance_ratio",
    "name_clash": "these class folders differ only by upper/lower case or Unicode form (NFC/NFD), so on "
                  "macOS and Windows they are one folder: merge them under one name, or rename one",
    "n_distinct": "these classes hold too few distinct pictures (near copies, such as a burst or a video's "
                  "frames, count once and always share a split, so train, val and test cannot each get one): "
                  "add different pictures of them, or lower validate.min_distinct_per_class",
    "label": "make the class folders match validate.expected_classes (or set it to null); quote names with "
             "leading zeros ('007'), which YAML otherwise reads as numbers",
    None: "add class folders (one per class, each holding images) or lower validate.min_classes",
}


def describe_failure(res: Any, table: pd.DataFrame) -> dict[str, Any]:
    """One failed expectation as the report shows it: what, observed, up to 10 offenders, fix."""
    conf = res.expectation_config
    column = conf.kwargs.get("column")
    found = res.result.get("unexpected_index_list") or []
    observed = res.result.get("observed_value", res.result.get("unexpected_count"))
    if "label" in table.columns and "n_images" in table.columns:
        offenders = [_class_line(table.set_index("label").loc[r["label"]], column) for r in found]
        if column == "label":  # the label set: one line, what is missing and what is not expected
            expected, present = set(conf.kwargs.get("value_set") or []), set(table["label"])
            observed = f"missing {sorted(expected - present)}, unexpected {sorted(present - expected)}"
            offenders = []
        elif column is None:
            offenders = [f"classes found: {sorted(table['label'])}"]
    else:
        rows = table.set_index("path")
        detail = "error" if column in ("decodes", "refused_link", "bad_name") else column
        offenders = [f"{r['path']} ({detail}: {rows.at[r['path'], detail]})" for r in found]
    return {
        "expectation": conf.type, "column": column,
        "kwargs": {k: v for k, v in conf.kwargs.items() if k not in ("column", "batch_id")},
        "observed": observed,
        "n_offending": len(found), "offending": offenders[:MAX_OFFENDERS], "fix": _FIXES[column],
    }


def _class_line(row: pd.Series, column: str | None) -> str:
    """One offending class: its image count, and the failed column's value when it is another."""
    line = f"class '{row.name}': {int(row['n_images'])} images"
    if column == "n_distinct":
        line += f", {int(row['n_distinct'])} distinct picture(s)"
    elif column == "name_clash":
        line += f"; on macOS and Windows the same folder as: {row['name_clash']}"
    return line


def build_report(kept: pd.DataFrame, classes: list[str], results: dict[str, list[Any]],
            failures: list[dict[str, Any]], skipped: dict[str, str]) -> dict[str, Any]:
    counts = kept.groupby("label").size().reindex(classes, fill_value=0)
    good = kept[kept["decodes"].astype(bool)]
    return {
        "success": not failures,
        "n_images": int(len(kept)), "n_classes": len(classes), "n_skipped": len(skipped),
        "images_per_class": {str(k): int(v) for k, v in counts.items()},
        "formats": {str(k): int(v) for k, v in good["format"].value_counts().items()},
        "modes": {str(k): int(v) for k, v in good["mode"].value_counts().items()},
        "width": _span(good["width"]), "height": _span(good["height"]),
        **copy_summary(good),
        "expectations": [_checked(name, r) for name, rs in results.items() for r in rs],
        "failures": failures,
        "skipped_files": [{"path": p, "check": c} for p, c in sorted(skipped.items())],
    }


# Each check as a person reads it, by the column it looks at (None: the class table's row count).
CHECKS = {"refused_link": "no symlink out of the folder (none at all when DVC tracks it)",
          "bad_name": "file and folder names are valid UTF-8", "decodes": "every file decodes as an image",
          "format": "the format is allowed", "width": "width at least", "height": "height at least",
          "label_conflict": "no picture (or a copy of it: resized, re-encoded, turned by a quarter turn, "
                            "mirrored; not cropped) under two labels",
          None: "number of classes at least",
          "n_images": "images per class at least", "imbalance": "largest / smallest class at most",
          "n_distinct": "distinct pictures (copies count once) per class at least",
          "name_clash": "no two class names differ only by case or Unicode form",
          "path_clash": "no two file paths differ only by case or Unicode form",
          "label": "the classes are exactly"}


def _checked(suite: str, res: Any) -> dict[str, Any]:
    """One expectation as the report lists it: the check in words, its threshold, what was
    observed (the offending count, or the value), and the verdict."""
    kwargs = {k: v for k, v in res.expectation_config.kwargs.items() if k not in ("column", "batch_id")}
    threshold = kwargs.get("min_value", kwargs.get("max_value", kwargs.get("value_set")))
    column = res.expectation_config.kwargs.get("column")
    if column in ("refused_link", "bad_name", "decodes", "label_conflict", "path_clash", "name_clash"):
        threshold = None  # yes/no checks
    observed = res.result.get("unexpected_count", res.result.get("observed_value"))
    return {"suite": suite, "expectation": res.expectation_config.type, "column": column,
            "check": CHECKS.get(column, res.expectation_config.type), "threshold": threshold,
            "observed": observed, "success": bool(res.success)}


def copy_summary(good: pd.DataFrame) -> dict[str, Any]:
    """Copies among the readable files (by ``data.nearcopy``'s rule), multi-frame files (their
    first frame is used) and images with too little detail to be hashed (never grouped)."""
    group = pd.Series(groups(good), index=good.index) if len(good) else pd.Series(dtype=int)
    sizes = group.value_counts()
    frames = good[good["frames"].astype(int) > 1] if "frames" in good else good.iloc[:0]
    return {"exact_duplicates": int(good["sha256"].duplicated().sum()),
            "copy_groups": int((sizes > 1).sum()), "images_in_copy_groups": int(sizes[sizes > 1].sum()),
            "largest_copy_group": int(sizes.max()) if len(sizes) else 0,
            "unhashed_images": int((good["phash"] == "").sum()),
            "multi_frame_files": {"n": len(frames),
                                  "first_frame_used": sorted(frames["path"])[:MAX_OFFENDERS]}}


def _span(values: pd.Series) -> dict[str, int]:
    return {"min": int(values.min()), "max": int(values.max())} if len(values) else {}


def format_failures(report: dict[str, Any], report_path: str | Path) -> str:
    """The message a user sees when the gate closes."""
    lines = [f"data validation failed: {len(report['failures'])} expectation(s) not met "
             f"(report: {report_path}); the data folder was not modified"]
    for f in report["failures"]:
        on = f"column '{f['column']}'" if f["column"] else "the class table" if f["suite"] != "pool-files" \
            else "the pool"
        where = " of the unlabeled pool (data.unlabeled_dir)" if f["suite"] == "pool-files" else ""
        lines.append(f"  - {f['expectation']} on {on}{where} {f['kwargs']}: observed {f['observed']}")
        lines += [f"      {o}" for o in f["offending"]]
        if f["n_offending"] > len(f["offending"]):
            lines.append(f"      ... and {f['n_offending'] - len(f['offending'])} more in the report")
        lines.append(f"      fix: {f['fix']}")
    return "\n".join(lines)
