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
