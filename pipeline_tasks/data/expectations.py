"""The Great Expectations suites of the gate and how they run: ``image-files`` (one row per
file: links, names, paths that clash by case or Unicode form, decoding, format, size, label
conflicts), ``image-classes`` (one row per class folder: count, imbalance, distinct pictures,
names that clash, expected label set) and ``pool-files`` (the unlabeled pool's files). GX
costs ~3 s to import: it is imported only when the gate runs.
"""

from __future__ import annotations

import logging
import unicodedata
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline_tasks.config import ValidateConfig
from pipeline_tasks.data.nearcopy import groups, label_conflicts


def name_clashes(names: pd.Series) -> pd.Series:
    """For each name (a class folder or a relative path), the other names that a case-insensitive,
    Unicode-normalising file system (macOS, Windows) takes for the same one, comma-separated
    (``""``: none): names equal under ``unicodedata.normalize("NFC", name).casefold()``, such as
    ``Cat``/``cat`` or an NFC and an NFD ``é``. Copied there, such folders merge and such files
    overwrite each other."""
    key = names.map(lambda name: unicodedata.normalize("NFC", name).casefold())
    members = names.groupby(key).agg(list)
    return pd.Series([", ".join(other for other in members[k] if other != name)
                      for name, k in zip(names, key, strict=True)], index=names.index, dtype=object)


def file_table(manifest: pd.DataFrame) -> pd.DataFrame:
    """The manifest as GX sees it: size and format are null for files that do not decode
    (GX skips nulls, so a broken file is reported once, under ``decodes``)."""
    ok = manifest["decodes"].astype(bool)
    refused = manifest["refused_link"].astype(bool) | manifest["bad_name"].astype(bool)
    return manifest.assign(
        decodes=manifest["decodes"].astype(object).where(~refused),  # never read: reported once
        format=manifest["format"].where(ok), width=manifest["width"].where(ok),
        height=manifest["height"].where(ok),
        label_conflict=label_conflicts(manifest) if len(manifest) else False,
        path_clash=name_clashes(manifest["path"]) if len(manifest) else "",
    )


def class_table(manifest: pd.DataFrame, classes: list[str]) -> pd.DataFrame:
    """One row per class folder, empty ones included: ``n_images``, ``imbalance`` (largest
    class / this one) and ``n_distinct``, its distinct pictures (copy groups by the one
    near-copy rule, ``nearcopy.groups``: a burst of near copies counts once)."""
    counts = manifest.groupby("label").size().reindex(classes, fill_value=0)
    group = pd.Series(groups(manifest) if len(manifest) else [], index=manifest.index, dtype="int64")
    distinct = group.groupby(manifest["label"]).nunique().reindex(classes, fill_value=0)
    biggest = max(int(counts.max()), 1)
    return pd.DataFrame({"label": classes, "n_images": counts.to_numpy(),
                         "imbalance": biggest / counts.clip(lower=1).to_numpy(),
                         "n_distinct": distinct.to_numpy(),
                         "name_clash": name_clashes(pd.Series(classes, dtype=object)).to_numpy()})


def _suites(cfg: ValidateConfig) -> dict[str, list[Any]]:
    import great_expectations as gx  # noqa: PLC0415 - GX costs ~3 s to import; only here

    e = gx.expectations
    classes = [
        e.ExpectTableRowCountToBeBetween(min_value=cfg.min_classes),
        e.ExpectColumnValuesToBeBetween(column="n_images", min_value=cfg.min_images_per_class),
        e.ExpectColumnValuesToBeBetween(column="imbalance", max_value=cfg.max_imbalance_ratio),
        e.ExpectColumnValuesToBeBetween(column="n_distinct", min_value=cfg.min_distinct_per_class),
        e.ExpectColumnValuesToBeInSet(column="name_clash", value_set=[""]),
    ]
    if cfg.expected_classes is not None:
        classes.append(e.ExpectColumnDistinctValuesToEqualSet(
            column="label", value_set=list(cfg.expected_classes)))
    def files() -> list[Any]:  # a fresh list per suite: GX binds expectations to their suite
        return [
            e.ExpectColumnValuesToBeInSet(column="refused_link", value_set=[False]),
            e.ExpectColumnValuesToBeInSet(column="bad_name", value_set=[False]),
            e.ExpectColumnValuesToBeInSet(column="path_clash", value_set=[""]),
            e.ExpectColumnValuesToBeInSet(column="decodes", value_set=[True]),
            e.ExpectColumnValuesToBeInSet(column="format", value_set=list(cfg.allowed_formats)),
            e.ExpectColumnValuesToBeBetween(column="width", min_value=cfg.min_width),
            e.ExpectColumnValuesToBeBetween(column="height", min_value=cfg.min_height),
        ]

    return {
        "image-files": [*files(), e.ExpectColumnValuesToBeInSet(column="label_conflict", value_set=[False])],
        "image-classes": classes,
        "pool-files": files(),  # the unlabeled pool: same file checks, no labels
    }


def run_suites(tables: dict[str, pd.DataFrame], cfg: ValidateConfig,
               docs_dir: Path | None) -> dict[str, list[Any]]:
    """Run each suite on its table in one ephemeral GX context; Data Docs to ``docs_dir``."""
    import great_expectations as gx  # noqa: PLC0415
    from great_expectations.checkpoint import UpdateDataDocsAction  # noqa: PLC0415
    from great_expectations.data_context.types.base import ProgressBarsConfig  # noqa: PLC0415

    # GX's Data Docs renderer logs a traceback for a failed label-set expectation it cannot draw
    # (KeyError 'unexpected_percent'); the page still renders and report.json says it in one line.
    logging.getLogger("great_expectations.render").setLevel(logging.CRITICAL)
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    actions: list[Any] = []
    if docs_dir is not None:
        context.add_data_docs_site(site_name="pretrainflow", site_config={
            "class_name": "SiteBuilder", "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            "store_backend": {"class_name": "TupleFilesystemStoreBackend",
                              "base_directory": str(docs_dir.resolve())}})
        actions = [UpdateDataDocsAction(name="data-docs", site_names=["pretrainflow"])]
    source = context.data_sources.add_pandas("manifest")
    results = {}
    suites = _suites(cfg)
    for name in tables:
        expectations = suites[name]
        batch = source.add_dataframe_asset(name).add_batch_definition_whole_dataframe("all")
        suite = context.suites.add(gx.ExpectationSuite(name=name, expectations=expectations))
        definition = context.validation_definitions.add(
            gx.ValidationDefinition(name=name, data=batch, suite=suite))
        index = "label" if name == "image-classes" else "path"
        checkpoint = context.checkpoints.add(gx.Checkpoint(
            name=name, validation_definitions=[definition], actions=actions,
            result_format={"result_format": "COMPLETE", "unexpected_index_column_names": [index]}))
        run = checkpoint.run(batch_parameters={"dataframe": tables[name]})
        results[name] = [r for v in run.run_results.values() for r in v.results]
    return results


def bad_files(results: list[Any]) -> dict[str, str]:
    """``{path: failed column}`` for every file a file-level expectation flagged."""
    return {r["path"]: res.expectation_config.kwargs["column"] for res in results if not res.success
            for r in res.result.get("unexpected_index_list") or []}
