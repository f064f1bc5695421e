"""cluster.yaml passes Ray's own cluster-launcher schema validation and has the promised shape."""

from __future__ import annotations

import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from conftest import REPO


def test_cluster_yaml_is_valid_for_the_ray_launcher():
    raw = yaml.safe_load((REPO / "cluster.yaml").read_text())
    config = prepare_config(raw)  # fills Ray's provider defaults, as `ray up` does
    validate_config(config)  # raises on any schema violation
    types = config["available_node_types"]
    assert config["head_node_type"] == "head"
    assert {"cpu_worker", "gpu_worker"} <= set(types)
    for name in ("cpu_worker", "gpu_worker"):
        assert types[name]["min_workers"] == 0
    assert raw["idle_timeout_minutes"] > 0
    # every node installs the pinned third-party packages, never raymaas itself
    setup = " ".join(raw["setup_commands"])
    assert "ray[train,rllib,serve,default]==2.60.0" in setup and "torch==2.13.0" in setup
    assert "raymaas" not in setup.replace("raymaas-artifacts", "")
    # the head runs an MLflow tracking server that the workers are pointed at
    assert "mlflow server" in " ".join(raw["head_start_ray_commands"])
    assert "MLFLOW_TRACKING_URI=http://" in " ".join(raw["worker_start_ray_commands"])
    # checkpoints go to storage every node reaches; the dashboard / job API only via a tunnel
    assert "RAYMAAS_STORAGE_PATH=s3://" in setup
    head_start = " ".join(raw["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start and "--dashboard-host=0.0.0.0" not in head_start
    # every node gets the one auth token (Ray 2.60 token auth) and runs in token mode
    assert raw["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    assert "RAY_AUTH_MODE=token" in head_start and "RAY_AUTH_MODE=token" in " ".join(raw["worker_start_ray_commands"])


def test_cluster_yaml_sizes_its_node_types_and_commits_no_database_password():
    """Sweeps count their trials against the worker types' resources x max_workers (read from the
    launcher's copy of this file on the head); the MLflow database's password is generated on the
    head, never written here."""
    from raymaas.runtime.cluster import capacity_of_config

    raw = yaml.safe_load((REPO / "cluster.yaml").read_text())
    types = raw["available_node_types"]
    assert types["cpu_worker"]["resources"]["CPU"] > 0 and types["gpu_worker"]["resources"]["GPU"] == 1
    head_start = " ".join(raw["head_start_ray_commands"])
    assert "--serve-artifacts" in head_start and "PGPASSWORD=$(cat ~/.mlflow-db-password)" in head_start
    text = (REPO / "cluster.yaml").read_text()
    assert "mlflow:mlflow@" not in text and "PASSWORD 'mlflow'" not in text
    # what the file says the cluster can grow to, from a head of 0 CPUs: 8 worker nodes at most
    grown = capacity_of_config(raw, {"CPU": 0.0, "node:10.0.0.1": 1.0}, {})
    cpus = types["cpu_worker"]["resources"]["CPU"] * 6 + types["gpu_worker"]["resources"]["CPU"] * 2
    assert grown == {"CPU": cpus, "GPU": 2.0}, grown
    # under the cluster-wide cap each resource counts the nodes richest in it: a GPU sweep is not
    # held to one trial because CPU nodes fill the cap
    gpu_under_cap = capacity_of_config({**raw, "max_workers": 6}, {"CPU": 0.0}, {})
    assert gpu_under_cap == {"CPU": types["cpu_worker"]["resources"]["CPU"] * 6, "GPU": 2.0}, gpu_under_cap
    # a type left unsized counts what it has now
    capped = {
        **raw,
        "max_workers": 7,
        "available_node_types": {**types, "gpu_worker": {**types["gpu_worker"], "resources": {}}},
    }
    grown = capacity_of_config(capped, {"CPU": 0.0}, {"GPU": 1.0})
    assert grown == {"CPU": types["cpu_worker"]["resources"]["CPU"] * 6, "GPU": 1.0}, grown
