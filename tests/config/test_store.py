"""Where a configured tracking URI points: ``resolve_store(uri, root)``, a pure function."""

from __future__ import annotations

from pathlib import Path

import pytest

from trackcfg._store import is_local_path, resolve_registry_uri, resolve_store


@pytest.fixture
def root(tmp_path: Path) -> Path:
    folder = tmp_path / "project"
    folder.mkdir()
    return folder


def _make_legacy_file_store(folder: Path) -> None:
    """What MLflow's old file store leaves behind: one folder per experiment with meta.yaml."""
    (folder / "0").mkdir(parents=True)
    (folder / "0" / "meta.yaml").write_text("experiment_id: '0'\nname: Default\n")


def test_bare_mlruns_is_a_sqlite_store_and_artifacts_folder_inside_it(root: Path) -> None:
    store = resolve_store("mlruns", root)

    assert store.tracking_uri == f"sqlite:///{root}/mlruns/mlflow.db"
    assert store.tracking_uri.startswith("sqlite:////")  # absolute: four slashes
    assert store.local_folder == root / "mlruns"
    assert store.artifact_root == (root / "mlruns" / "artifacts").as_uri()
    assert store.legacy_file_store is False
    assert store.is_local


@pytest.mark.parametrize("uri", ["./mlruns", "mlruns/", "sub/../mlruns"])
def test_spellings_of_a_relative_folder_resolve_to_the_same_store(root: Path, uri: str) -> None:
    assert resolve_store(uri, root) == resolve_store("mlruns", root)


def test_a_relative_folder_may_point_above_the_root(root: Path) -> None:
    store = resolve_store("../shared-runs", root)

    assert store.local_folder == root.parent / "shared-runs"
    assert store.tracking_uri == f"sqlite:///{root.parent}/shared-runs/mlflow.db"


def test_absolute_folder_is_kept_and_gets_a_sqlite_store(root: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere" / "runs"

    store = resolve_store(str(elsewhere), root)

    assert store.local_folder == elsewhere
    assert store.tracking_uri == f"sqlite:///{elsewhere}/mlflow.db"
    assert store.artifact_root == (elsewhere / "artifacts").as_uri()


def test_absolute_file_uri_is_a_local_store_folder(root: Path, tmp_path: Path) -> None:
    folder = tmp_path / "file-store"

    store = resolve_store(folder.as_uri(), root)

    assert store.local_folder == folder
    assert store.tracking_uri == f"sqlite:///{folder}/mlflow.db"
    assert store.artifact_root == (folder / "artifacts").as_uri()


def test_file_uri_with_localhost_is_a_local_path(root: Path, tmp_path: Path) -> None:
    folder = tmp_path / "file-store"

    store = resolve_store(f"file://localhost{folder}", root)

    assert store.local_folder == folder


def test_relative_file_uri_resolves_against_the_root(root: Path) -> None:
    store = resolve_store("file:runs", root)

    assert store.local_folder == root / "runs"
    assert store.tracking_uri == f"sqlite:///{root}/runs/mlflow.db"


def test_percent_encoded_file_uri_points_at_the_decoded_folder(root: Path, tmp_path: Path) -> None:
    folder = tmp_path / "my runs"

    store = resolve_store(folder.as_uri(), root)

    assert store.local_folder == folder


def test_relative_sqlite_uri_resolves_against_the_root(root: Path) -> None:
    store = resolve_store("sqlite:///rel.db", root)

    assert store.tracking_uri == f"sqlite:///{root}/rel.db"
    assert store.local_folder is None
    assert store.is_local


def test_relative_sqlite_uri_in_a_subfolder_resolves_against_the_root(root: Path) -> None:
    assert (
        resolve_store("sqlite:///db/runs.db", root).tracking_uri == f"sqlite:///{root}/db/runs.db"
    )


def test_absolute_sqlite_uri_is_kept(root: Path) -> None:
    assert (
        resolve_store("sqlite:////abs/dir/abs.db", root).tracking_uri == "sqlite:////abs/dir/abs.db"
    )


@pytest.mark.parametrize("uri", ["sqlite://", "sqlite:///:memory:"])
def test_in_memory_sqlite_uri_is_kept(root: Path, uri: str) -> None:
    assert resolve_store(uri, root).tracking_uri == uri


@pytest.mark.parametrize(
    "uri",
    [
        "http://127.0.0.1:5000",
        "https://mlflow.example.com/",
        "postgresql://postgres@127.0.0.1:5432/mlflow",
        "postgresql+psycopg2://postgres@127.0.0.1:5432/mlflow",
        "databricks://my-profile",
    ],
)
def test_remote_uris_are_kept_as_they_are(root: Path, uri: str) -> None:
    store = resolve_store(uri, root)

    assert store.tracking_uri == uri
    assert store.local_folder is None
    assert store.artifact_root is None
    assert not store.is_local


@pytest.mark.parametrize("uri", ["databricks", "databricks-uc"])
def test_databricks_uri_without_colon_is_kept(root: Path, uri: str) -> None:
    assert resolve_store(uri, root).tracking_uri == uri


def test_existing_legacy_file_store_folder_keeps_being_a_file_store(root: Path) -> None:
    _make_legacy_file_store(root / "mlruns")

    store = resolve_store("mlruns", root)

    assert store.legacy_file_store is True
    assert store.tracking_uri == (root / "mlruns").as_uri()
    assert store.local_folder == root / "mlruns"


def test_folder_with_a_sqlite_db_is_not_a_legacy_file_store(root: Path) -> None:
    _make_legacy_file_store(root / "mlruns")
    (root / "mlruns" / "mlflow.db").touch()

    store = resolve_store("mlruns", root)

    assert store.legacy_file_store is False
    assert store.tracking_uri == f"sqlite:///{root}/mlruns/mlflow.db"


def test_empty_existing_folder_is_not_a_legacy_file_store(root: Path) -> None:
    (root / "mlruns").mkdir()

    assert resolve_store("mlruns", root).legacy_file_store is False


def test_the_current_directory_never_matters(
    root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    uris = ["mlruns", "./runs", "file:runs", "sqlite:///rel.db", "http://127.0.0.1:5000"]
    expected = [resolve_store(uri, root) for uri in uris]
    # A CWD that holds a legacy file store under the same name must not be looked at.
    other = tmp_path / "other-cwd"
    _make_legacy_file_store(other / "mlruns")
    monkeypatch.chdir(other)

    assert [resolve_store(uri, root) for uri in uris] == expected
    assert resolve_store("mlruns", root).legacy_file_store is False


def test_registry_uri_resolves_like_a_tracking_uri_and_none_is_kept(root: Path) -> None:
    assert resolve_registry_uri(None, root) is None
    assert resolve_registry_uri("sqlite:///registry.db", root) == f"sqlite:///{root}/registry.db"
    assert resolve_registry_uri("http://127.0.0.1:5000", root) == "http://127.0.0.1:5000"


@pytest.mark.parametrize(
    ("uri", "local"),
    [
        ("mlruns", True),
        ("/abs/runs", True),
        ("file:///abs/runs", True),
        ("sqlite:///rel.db", False),
        ("http://127.0.0.1:5000", False),
    ],
)
def test_is_local_path_is_true_for_bare_paths_and_file_uris(uri: str, local: bool) -> None:
    assert is_local_path(uri) is local
