"""A file-based MLflow store is refused on a Ray cluster of several nodes, with the fix; an
MLflow server's URI is fine anywhere (the real multi-node case: ray.cluster_utils.Cluster in the
cluster tests call `check_store_for_cluster` with `runtime.alive_nodes()`)."""

from __future__ import annotations

import pytest

from mfdiffuser.platform.config import ConfigError
from mfdiffuser.platform.jobs import check_store_for_cluster, file_store

FILE_STORES = [
    None,
    "sqlite:///mlflow.db",
    "sqlite:////abs/mlflow.db",
    "file:///x/mlruns",
    "mlruns",
]


@pytest.mark.parametrize("uri", FILE_STORES)
def test_a_file_store_is_refused_on_several_nodes_only(uri: str | None) -> None:
    assert file_store(uri)
    check_store_for_cluster(uri, 1)  # one machine, one driver: SQLite is fine
    with pytest.raises(ConfigError) as err:
        check_store_for_cluster(uri, 3)
    text = str(err.value)
    assert text.startswith(f"runtime.tracking_uri = {uri or 'None'}"), text
    assert "3 nodes" in text and "mlflow server" in text and "--tracking-uri http://" in text


@pytest.mark.parametrize("uri", ["http://10.0.0.5:5000", "https://mlflow.example", "databricks"])
def test_a_server_uri_is_fine_on_any_cluster(uri: str) -> None:
    assert not file_store(uri)
    check_store_for_cluster(uri, 8)
