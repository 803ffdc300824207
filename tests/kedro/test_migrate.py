"""``kedro trackcfg migrate``: kedro-mlflow catalogs rewritten byte for byte but the types.

Most tests call ``trackcfg._migrate`` on project folders written here (it is text work, no
Kedro needed); one runs the real ``kedro trackcfg migrate`` in a generated Kedro project.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import write
from test_kedro import kedro_cli, kedro_template  # noqa: F401  (a fixture)

from trackcfg import _migrate
from trackcfg.exceptions import TrackcfgError

NEW = "trackcfg.kedro.datasets."


def tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (relative path -> bytes) and nothing else."""
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def migrate(root: Path, *, dry_run: bool = False) -> str:
    migration = _migrate.plan(root)
    if not dry_run:
        _migrate.apply(migration)
    return _migrate.render(migration, dry_run=dry_run)


# Every spelling of kedro-mlflow 2.0.3's seven datasets that Kedro resolves, in odd layouts.
ODD_CATALOG = """\
# Catalog of a kedro-mlflow project.\t(a tab in a comment)
_mlflow_metric: &metric
  type: kedro_mlflow.io.metrics.MlflowMetricDataset   # trailing comment
  key: accuracy

report:
  type: "kedro_mlflow.io.artifacts.MlflowArtifactDataset"
  dataset:
    type: pandas.CSVDataset  # the wrapped dataset keeps its own type
    filepath: data/08_reporting/report.csv
  artifact_path: reports

plot: {type: 'kedro_mlflow.io.artifacts.mlflow_artifact_dataset.MlflowArtifactDataset',
  dataset: {type: text.TextDataset, filepath: data/plot.txt}}

accuracy:
  <<: *metric

accuracy2:
    type:   kedro_mlflow.io.metrics.mlflow_metric_dataset.MlflowMetricDataset

loss_history:
  type: kedro_mlflow.io.metrics.MlflowMetricHistoryDataset
loss_history2:
  type: kedro_mlflow.io.metrics.mlflow_metric_history_dataset.MlflowMetricHistoryDataset
metrics:
  type: kedro_mlflow.io.metrics.MlflowMetricsHistoryDataset
metrics2:
  type: >-
    kedro_mlflow.io.metrics.mlflow_metrics_history_dataset.MlflowMetricsHistoryDataset

"{name}_model":
  type: kedro_mlflow.io.models.MlflowModelTrackingDataset
  flavor: mlflow.sklearn
model2:
  type: kedro_mlflow.io.models.mlflow_model_tracking_dataset.MlflowModelTrackingDataset
  flavor: mlflow.sklearn
local_model:
  type: kedro_mlflow.io.models.MlflowModelLocalFileSystemDataset
  flavor: mlflow.sklearn
  filepath: data/06_models/model
local_model2:
  type: !!str
    kedro_mlflow.io.models.mlflow_model_local_filesystem_dataset.MlflowModelLocalFileSystemDataset
  flavor: mlflow.sklearn
  filepath: data/06_models/model2
registered:
  type: kedro_mlflow.io.models.MlflowModelRegistryDataset
  model_name: clf
registered2:
  type: kedro_mlflow.io.models.mlflow_model_registry_dataset.MlflowModelRegistryDataset
  model_name: clf
  alias: champion
plain:
  type: pandas.CSVDataset      # kedro_mlflow.io.metrics.MlflowMetricDataset in a comment stays
  filepath: "data/kedro_mlflow.io.models.MlflowModelRegistryDataset.csv"
"""


def expected_of(text: str) -> str:
    """What migrate must make of ``ODD_CATALOG``: the class paths of the type values, and
    nothing else (the comment and the file path naming kedro-mlflow classes stay)."""
    head, _, tail = text.partition("plain:\n")
    for spelling in sorted(_migrate.SPELLINGS, key=len, reverse=True):
        head = head.replace(spelling, _migrate.SPELLINGS[spelling])
    return head + "plain:\n" + tail


def test_every_spelling_rewritten_and_everything_else_byte_identical(tmp_path: Path) -> None:
    catalog = write(tmp_path / "conf" / "base" / "catalog.yml", ODD_CATALOG)
    assert len(_migrate.SPELLINGS) == 14
    assert all(spelling in ODD_CATALOG for spelling in _migrate.SPELLINGS)

    output = migrate(tmp_path)

    assert catalog.read_text(encoding="utf-8") == expected_of(ODD_CATALOG)
    lines = output.splitlines()
    assert (
        "conf/base/catalog.yml:3: kedro_mlflow.io.metrics.MlflowMetricDataset -> "
        "trackcfg.kedro.datasets.MlflowMetricDataset"
    ) in lines
    # The folded block scalar's class path is on the line after `type: >-`.
    folded = ODD_CATALOG.splitlines().index("  type: >-") + 2
    assert (
        f"conf/base/catalog.yml:{folded}: kedro_mlflow.io.metrics.mlflow_metrics_history_dataset"
        ".MlflowMetricsHistoryDataset -> trackcfg.kedro.datasets.MlflowMetricsHistoryDataset"
    ) in lines
    assert lines[-1] == "Changed 14 kedro-mlflow dataset types in 1 catalog file."
    # Nothing left behind, the second time nothing to do.
    assert "kedro_mlflow" not in expected_of(ODD_CATALOG).partition("plain:\n")[0]
    assert migrate(tmp_path).splitlines()[-1] == (
        "No kedro-mlflow dataset types in the 1 catalog file."
    )


def test_crlf_bom_tabs_and_an_alias_of_a_type_scalar(tmp_path: Path) -> None:
    text = (
        "\ufeff# windows file\t\t(tabs)\r\n"
        "_types:\r\n"
        "  artifact: &artifact kedro_mlflow.io.artifacts.MlflowArtifactDataset\r\n"
        "report:\r\n"
        "  type: *artifact\r\n"
        "  dataset: {type: text.TextDataset, filepath: r.txt}\r\n"
        "metric:\r\n"
        "  type: 'kedro_mlflow.io.metrics.MlflowMetricDataset'\r\n"
    )
    catalog = tmp_path / "conf" / "local" / "catalog.yml"
    catalog.parent.mkdir(parents=True)
    catalog.write_bytes(text.encode("utf-8"))

    output = migrate(tmp_path)

    expected = text.replace("kedro_mlflow.io.artifacts.", NEW).replace(
        "kedro_mlflow.io.metrics.", NEW
    )
    assert catalog.read_bytes() == expected.encode("utf-8")
    assert output.splitlines()[:2] == [
        "conf/local/catalog.yml:3: kedro_mlflow.io.artifacts.MlflowArtifactDataset -> "
        "trackcfg.kedro.datasets.MlflowArtifactDataset",
        "conf/local/catalog.yml:8: kedro_mlflow.io.metrics.MlflowMetricDataset -> "
        "trackcfg.kedro.datasets.MlflowMetricDataset",
    ]


def test_kedro_catalog_patterns_are_followed_and_other_files_left(tmp_path: Path) -> None:
    """Kedro's patterns in each environment: catalog*, catalog*/**, **/catalog*; .yml, .yaml
    and .json; hidden files and folders skipped.  Other YAML files are listed, not changed."""
    line = "a:\n  type: kedro_mlflow.io.metrics.MlflowMetricDataset\n"
    conf = tmp_path / "conf"
    for name in (
        "base/catalog.yml",
        "base/catalog_models.yaml",
        "local/catalogs/anything.yml",
        "local/nested/deeper/catalog.yml",
    ):
        write(conf / name, line)
    (conf / "base" / "catalog_extra.json").write_text(
        '{"b": {"type": "kedro_mlflow.io.metrics.MlflowMetricDataset", "key": "b"}}\n'
    )
    left = {
        "base/.catalog_hidden.yml": line,
        "base/.hidden/catalog.yml": line,
        "base/catalog.txt": line,
        "base/parameters.yml": line,
        "catalog.yml": line,  # conf/ itself is no environment
    }
    for name, text in left.items():
        write(conf / name, text)
    before = tree(conf)

    output = migrate(tmp_path)

    after = tree(conf)
    changed = {name for name in after if after[name] != before[name]}
    assert changed == {
        "base/catalog.yml",
        "base/catalog_models.yaml",
        "base/catalog_extra.json",
        "local/catalogs/anything.yml",
        "local/nested/deeper/catalog.yml",
    }
    assert after["base/catalog_extra.json"] == (
        b'{"b": {"type": "trackcfg.kedro.datasets.MlflowMetricDataset", "key": "b"}}\n'
    )
    assert "Changed 5 kedro-mlflow dataset types in 5 catalog files." in output
    assert (
        "  conf/base/parameters.yml:2: names kedro_mlflow outside a catalog file: left as it "
        "is; change it by hand (kedro_mlflow.io.metrics.MlflowMetricDataset -> "
        "trackcfg.kedro.datasets.MlflowMetricDataset)"
    ) in output.splitlines()


def test_dry_run_lists_the_changes_and_writes_nothing(tmp_path: Path) -> None:
    write(tmp_path / "conf" / "base" / "catalog.yml", ODD_CATALOG)
    before = tree(tmp_path)

    output = migrate(tmp_path, dry_run=True)

    assert tree(tmp_path) == before
    lines = output.splitlines()
    assert len([line for line in lines if " -> trackcfg.kedro.datasets." in line]) == 14
    assert lines[-1] == (
        "Would change 14 kedro-mlflow dataset types in 1 catalog file (--dry-run: nothing written)."
    )


def test_a_malformed_catalog_stops_everything_with_file_and_line(tmp_path: Path) -> None:
    good = write(tmp_path / "conf" / "base" / "catalog.yml", ODD_CATALOG)
    write(
        tmp_path / "conf" / "local" / "catalog.yml",
        """\
        report:
          type: kedro_mlflow.io.artifacts.MlflowArtifactDataset
          dataset: {type: text.TextDataset, filepath: r.txt
        other: 1
        """,
    )
    (tmp_path / "conf" / "local" / "catalog_bytes.yml").write_bytes(b"a: 1\nb: \xff\n")
    before = tree(tmp_path)

    with pytest.raises(TrackcfgError) as caught:
        _migrate.plan(tmp_path)

    message = str(caught.value)
    assert message.startswith(
        "cannot migrate: 2 catalog file(s) cannot be read, so nothing was changed; fix them "
        "and run again:\n"
    )
    assert "  conf/local/catalog.yml:4: malformed YAML: " in message
    assert "  conf/local/catalog_bytes.yml:2: not UTF-8 text" in message
    assert tree(tmp_path) == before
    assert good.read_text(encoding="utf-8") == ODD_CATALOG


def test_what_cannot_be_carried_over_is_named_with_file_and_line(tmp_path: Path) -> None:
    write(tmp_path / "conf" / "base" / "catalog.yml", "a:\n  type: pandas.CSVDataset\n")
    write(
        tmp_path / "conf" / "base" / "catalog_old.yml",
        "old:\n  type: kedro_mlflow.io.artifacts.MlflowArtifactDataSet\n",
    )
    registry = write(
        tmp_path / "src" / "demo" / "pipeline_registry.py",
        """\
        from kedro.pipeline import Pipeline
        from kedro_mlflow.pipeline import pipeline_ml_factory
        from kedro_mlflow.io.models import MlflowModelTrackingDataset


        def register_pipelines():
            return {"__default__": pipeline_ml_factory(training=Pipeline([]), inference=None)}
        """,
    )
    write(tmp_path / "requirements.txt", "kedro~=1.0\nkedro-mlflow==2.0.3  # tracking\n")
    write(tmp_path / "pyproject.toml", '[project]\ndependencies = ["kedro_mlflow>=2"]\n')
    write(tmp_path / "scripts" / "serve.sh", "#!/bin/sh\nkedro mlflow ui --port 5001\n")
    write(tmp_path / "data" / "notes.md", "kedro mlflow ui\n")  # data is not searched
    hooks = write(
        tmp_path / "src" / "demo" / "settings.py",
        "from kedro_mlflow.framework.hooks import MlflowHook\n",
    )
    before = tree(tmp_path)

    output = migrate(tmp_path)

    after = tree(tmp_path)
    assert {k for k in after if after[k] != before.get(k)} == {"src/demo/pipeline_registry.py"}
    assert registry.read_text() == before["src/demo/pipeline_registry.py"].decode().replace(
        "from kedro_mlflow.pipeline import", "from trackcfg.kedro.pipeline import"
    ).replace("from kedro_mlflow.io.models import", "from trackcfg.kedro.datasets import")
    assert hooks.read_text() == "from kedro_mlflow.framework.hooks import MlflowHook\n"
    left = output.splitlines()[output.splitlines().index("Not carried over (do it by hand):") :]
    assert left[1:] == [
        "  conf/base/catalog_old.yml:2: 'kedro_mlflow.io.artifacts.MlflowArtifactDataSet' is "
        "not one of kedro-mlflow 2.0.3's datasets: left as it is; change it by hand "
        "(trackcfg.kedro.datasets has " + ", ".join(_migrate.DATASETS) + ")",
        "  pyproject.toml:2: the kedro-mlflow dependency: remove it (and `pip uninstall "
        "kedro-mlflow`): with both plugins installed, both track every run",
        "  requirements.txt:2: the kedro-mlflow dependency: remove it (and `pip uninstall "
        "kedro-mlflow`): with both plugins installed, both track every run",
        "  scripts/serve.sh:2: `kedro mlflow ui`: use `kedro trackcfg ui`",
        "  src/demo/settings.py:1: imports kedro_mlflow: remove it: trackcfg's hooks "
        "register themselves (entry point kedro.hooks)",
    ]
    assert registry.exists()


def test_a_symlinked_catalog_keeps_its_link_and_mode(tmp_path: Path) -> None:
    shared = write(
        tmp_path / "shared" / "catalog.yml", "m:\n  type: " + next(iter(_migrate.SPELLINGS)) + "\n"
    )
    shared.chmod(0o640)
    link = tmp_path / "conf" / "base" / "catalog.yml"
    link.parent.mkdir(parents=True)
    link.symlink_to(shared)

    migrate(tmp_path)

    assert link.is_symlink()
    assert shared.read_text() == "m:\n  type: trackcfg.kedro.datasets.MlflowArtifactDataset\n"
    assert shared.stat().st_mode & 0o777 == 0o640
    assert sorted(p.name for p in shared.parent.iterdir()) == ["catalog.yml"]


# --------------------------------------------------------------------------------------------
# The real command, in a generated Kedro project.


def test_kedro_trackcfg_migrate_in_a_generated_project(
    kedro_template: Path,  # noqa: F811  (test_kedro's fixture)
    tmp_path: Path,
) -> None:
    project = Path(shutil.copytree(kedro_template, tmp_path / "demo"))
    catalog = write(project / "conf" / "base" / "catalog.yml", ODD_CATALOG)
    # A module the pipelines do not import (kedro-mlflow is not installed here).
    write(
        project / "src" / "tracked_demo" / "inference.py",
        "from kedro_mlflow.pipeline import pipeline_ml_factory\n",
    )

    dry = kedro_cli(project, "trackcfg", "migrate", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert catalog.read_text(encoding="utf-8") == ODD_CATALOG
    assert "(--dry-run: nothing written)" in dry.stdout

    done = kedro_cli(project, "trackcfg", "migrate")

    assert done.returncode == 0, done.stderr
    assert catalog.read_text(encoding="utf-8") == expected_of(ODD_CATALOG)
    assert "Changed 14 kedro-mlflow dataset types in 1 catalog file." in done.stdout
    assert (
        "src/tracked_demo/inference.py:1: kedro_mlflow.pipeline -> trackcfg.kedro.pipeline"
    ) in done.stdout.splitlines()
    assert (project / "src" / "tracked_demo" / "inference.py").read_text() == (
        "from trackcfg.kedro.pipeline import pipeline_ml_factory\n"
    )
    # Kedro reads the migrated catalog: every migrated entry is one of trackcfg's datasets.
    from kedro.config import OmegaConfigLoader

    loaded = OmegaConfigLoader(str(project / "conf"), base_env="base", default_run_env="local")
    types = {entry.get("type") for entry in loaded["catalog"].values()}
    assert {t for t in types if t and "datasets." in t and "Mlflow" in t} == {
        NEW + name for name in _migrate.DATASETS
    }

    # A malformed catalog: exit code 1, file and line, nothing written.
    write(project / "conf" / "local" / "catalog.yml", "a: [1,\nb: 2\n")
    before = tree(project / "conf")
    broken = kedro_cli(project, "trackcfg", "migrate")
    assert broken.returncode == 1
    assert "conf/local/catalog.yml:" in broken.stderr
    assert "Traceback" not in broken.stderr
    assert tree(project / "conf") == before

    # A catalog in a folder it cannot write: one line naming it, nothing written anywhere.
    (project / "conf" / "local" / "catalog.yml").unlink()
    write(project / "conf" / "base" / "catalog.yml", ODD_CATALOG)
    locked = write(project / "conf" / "local" / "catalog.yml", ODD_CATALOG).parent
    with read_only(locked):
        before = tree(project)
        refused = kedro_cli(project, "trackcfg", "migrate")
        assert tree(project) == before
    assert refused.returncode == 1
    assert [line for line in refused.stderr.splitlines() if line.strip()] == [
        "Error: cannot migrate: conf/local/catalog.yml cannot be rewritten, its folder "
        f"{locked} is not writable; nothing was changed"
    ]


def test_only_the_kedro_mlflow_package_and_kedro_mlflow_commands_are_reported(
    tmp_path: Path,
) -> None:
    """Names that merely start with kedro_mlflow (a project called kedro_mlflow_tutorial) and
    prose are not kedro-mlflow leftovers; a metadata string equal to a class path stays."""
    catalog = write(
        tmp_path / "conf" / "base" / "catalog.yml",
        """\
        m:
          type: kedro_mlflow.io.metrics.MlflowMetricDataset
          metadata:
            origin: kedro_mlflow.io.metrics.MlflowMetricDataset
        """,
    )
    write(
        tmp_path / "conf" / "base" / "mlflow.yml",
        "tracking:\n  experiment:\n    name: kedro_mlflow_tutorial\n",
    )
    write(
        tmp_path / "src" / "kedro_mlflow_tutorial" / "pipeline_registry.py",
        """\
        import logging
        from kedro_mlflow_tutorial.pipelines import ml_app
        import kedro_mlflow_tutorial
        logger = logging.getLogger("kedro_mlflow_tutorial")
        # kedro mlflow tutorial: see the README
        """,
    )
    write(
        tmp_path / "README.md",
        """\
        # The kedro mlflow tutorial
        This kedro mlflow tutorial shows kedro_mlflow_tutorial.
        ```
        $ kedro mlflow ui
        kedro mlflow init --env local
        ```
        """,
    )
    write(tmp_path / "pyproject.toml", '[project]\nname = "kedro_mlflow_tutorial"\n')

    output = migrate(tmp_path, dry_run=True)

    left = output.splitlines()[output.splitlines().index("Not carried over (do it by hand):") :]
    assert left[1:] == [
        "  README.md:4: `kedro mlflow ui`: use `kedro trackcfg ui`",
        "  README.md:5: `kedro mlflow init`: use `kedro trackcfg init`",
    ]
    migrate(tmp_path)
    assert catalog.read_text().splitlines()[1:4] == [
        "  type: trackcfg.kedro.datasets.MlflowMetricDataset",
        "  metadata:",
        "    origin: kedro_mlflow.io.metrics.MlflowMetricDataset",
    ]


@contextlib.contextmanager
def read_only(folder: Path) -> Iterator[None]:
    """``folder`` refuses new files for the block: its mode, and for root (whom modes do not
    stop) the immutable attribute; the test is skipped where neither can be had."""
    folder.chmod(0o555)
    immutable = False
    try:
        probe = folder / ".probe"
        try:
            probe.touch()
        except OSError:
            pass
        else:
            probe.unlink()
            immutable = subprocess.run(["chattr", "+i", str(folder)], check=False).returncode == 0
            if not immutable:
                pytest.skip("cannot make a folder read-only here (root, no chattr)")
        yield
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
        folder.chmod(0o755)


def test_two_catalogs_one_unwritable_nothing_written(tmp_path: Path) -> None:
    first = write(
        tmp_path / "conf" / "base" / "catalog.yml",
        "a:\n  type: " + next(iter(_migrate.SPELLINGS)) + "\n",
    )
    second = write(tmp_path / "conf" / "local" / "catalog.yml", first.read_text())
    with read_only(second.parent):
        before = tree(tmp_path)
        with pytest.raises(_migrate.MigrationError) as caught:
            migrate(tmp_path)
        assert tree(tmp_path) == before
    assert str(caught.value) == (
        "cannot migrate: conf/local/catalog.yml cannot be rewritten, its folder "
        f"{second.parent} is not writable; nothing was changed"
    )


def test_a_symlinked_catalog_says_where_it_writes(tmp_path: Path) -> None:
    shared = write(
        tmp_path / "shared" / "catalog.yml",
        "m:\n  type: " + next(iter(_migrate.SPELLINGS)) + "\n",
    )
    link = tmp_path / "conf" / "base" / "catalog.yml"
    link.parent.mkdir(parents=True)
    link.symlink_to(shared)

    assert (
        f"conf/base/catalog.yml is a symbolic link: would write {shared}"
        in migrate(tmp_path, dry_run=True).splitlines()
    )
    assert (
        f"conf/base/catalog.yml is a symbolic link: wrote {shared}"
        in migrate(tmp_path).splitlines()
    )


def test_pipeline_imports_point_at_trackcfg_and_the_rest_stays_byte_for_byte(
    tmp_path: Path,
) -> None:
    code = (
        "# -*- coding: utf-8 -*-\r\n"
        "from kedro_mlflow.pipeline import pipeline_ml_factory  # the factory\r\n"
        "from kedro_mlflow.pipeline.pipeline_ml import (\r\n"
        "    PipelineML as ML,\r\n"
        "    KedroMlflowPipelineMLError,\r\n"
        ")\r\n"
        "from kedro_mlflow.mlflow import KedroPipelineModel\r\n"
        "from kedro_mlflow.mlflow.kedro_pipeline_model import KedroPipelineModelError\r\n"
        "from kedro_mlflow.pipeline.pipeline_ml_factory import pipeline_ml_factory as f\r\n"
        'TEXT = "from kedro_mlflow.pipeline import pipeline_ml_factory"\r\n'
        "from kedro_mlflow.framework.hooks import MlflowHook\r\n"
    )
    module = tmp_path / "src" / "demo" / "pipelines.py"
    module.parent.mkdir(parents=True)
    module.write_bytes(code.encode())

    output = migrate(tmp_path)

    expected = (
        code.replace("from kedro_mlflow.pipeline import", "from trackcfg.kedro.pipeline import")
        .replace("kedro_mlflow.pipeline.pipeline_ml import", "trackcfg.kedro.pipeline import")
        .replace("from kedro_mlflow.mlflow import", "from trackcfg.kedro.pipeline import")
        .replace(
            "kedro_mlflow.mlflow.kedro_pipeline_model import", "trackcfg.kedro.pipeline import"
        )
        .replace(
            "kedro_mlflow.pipeline.pipeline_ml_factory import", "trackcfg.kedro.pipeline import"
        )
        .replace('TEXT = "from trackcfg.kedro.pipeline', 'TEXT = "from kedro_mlflow.pipeline')
    )
    assert module.read_bytes() == expected.encode()
    assert "src/demo/pipelines.py:7: kedro_mlflow.mlflow -> trackcfg.kedro.pipeline" in (
        output.splitlines()
    )
    assert output.splitlines()[-1] == (
        "  src/demo/pipelines.py:11: imports kedro_mlflow: remove it: trackcfg's hooks "
        "register themselves (entry point kedro.hooks)"
    )
