"""Multi-node on one machine, with Ray's own autoscaler and its fake multi-node provider.

The head (0 CPUs, like cluster.yaml's) runs the real autoscaler; the nodes it adds are local
raylet processes of 1 CPU each. Jobs log to a real MLflow tracking server on PostgreSQL that
serves the artifacts (as cluster.yaml's head runs it) and checkpoint to a folder that every fake
node shares (this machine's disk, declared with RAYMAAS_SHARED_STORAGE).

Shown here: a node-local MLflow store or checkpoint folder is refused before anything starts;
a job that cannot fit the head gets worker nodes and runs spread over them, a worker node
killed mid-training costs it a restart from the last checkpoint, in the same MLflow run, and
the nodes go after the idle timeout (one job shows all three); a sweep on the empty cluster
puts as many trials in flight as the node types can hold, and the autoscaler adds nodes for
them; an elastic job (num_workers [1, 2]) grows as nodes join and goes on with fewer after a
node is lost; a batch job's actor pool (--actors 1:3) grows onto nodes added for it; a Serve
deployment under load gets replicas (and nodes) and gives them back when the load stops. Every
test ends with the cluster back to its head alone, as the autoscaler sees it: a node kept busy
by something left behind fails the test that left it, naming what keeps it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
import yaml

from conftest import DEBUG_SPEC, REPO, free_port, ray_status, wait_for
from postgres import postgres_server
from raymaas.runtime import localcluster
from raymaas.tracking import JOB_KEY_TAG

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

WORKER_TYPE = "cpu_worker"
MAX_WORKERS = 3
IDLE_TIMEOUT_MINUTES = 0.2  # 12 s: Ray's autoscaler accepts fractions of a minute
# Epochs of a few seconds each on 2 workers: long enough to kill a node in the middle.
SLOW_EPOCHS = [
    "--set",
    "data.source=synthetic",
    "--set",
    "data.n_samples=30000",
    "--set",
    "data.n_features=32",
    "--set",
    "model.hidden_sizes=[256, 256]",
    "--set",
    "train_loop_config.batch_size=32",
]


def autoscaling_config(gcs_port: int) -> dict:
    """A cluster-launcher config for Ray's fake multi-node provider (the file Ray's
    AutoscalingCluster would start from is missing from the 2.60 wheel)."""
    return {
        "cluster_name": "raymaas-fake",
        "max_workers": MAX_WORKERS,
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": IDLE_TIMEOUT_MINUTES,
        "provider": {
            "type": "external",
            "module": "ray.autoscaler._private.fake_multi_node.node_provider.FakeMultiNodeProvider",
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
            "gcs_address": f"127.0.0.1:{gcs_port}",  # the provider assumes 6379 otherwise
        },
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 0}, "node_config": {}, "max_workers": 0},
            WORKER_TYPE: {"resources": {"CPU": 1}, "node_config": {}, "min_workers": 0, "max_workers": MAX_WORKERS},
        },
        "head_node_type": "ray.head.default",
        "auth": {},
        "docker": {},
        "file_mounts": {},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        "rsync_exclude": [],
        "rsync_filter": [],
        "initialization_commands": [],
        "setup_commands": [],
        "head_setup_commands": [],
        "worker_setup_commands": [],
        "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
    }


@dataclass
class FakeCluster:
    address: str
    dashboard_url: str
    mlflow_url: str
    home: Path
    env: dict  # environment of job drivers that join the cluster

    def job_env(self, **extra) -> dict:
        env = {**self.env, **extra}
        return {k: v for k, v in env.items() if v is not None}


@pytest.fixture(scope="module")
def fake_cluster(tmp_path_factory):
    """The fake autoscaling cluster and an MLflow server, started by raymaas.runtime.localcluster (as
    `raymaas up` does, plus the autoscaling config); this process joins it as a driver."""
    import mlflow
    import ray

    from raymaas.runtime.cluster import connect

    home = tmp_path_factory.mktemp("multinode") / "home"
    home.mkdir()
    port = free_port()
    config = home / "autoscaling.yaml"
    config.write_text(yaml.safe_dump(autoscaling_config(port)))
    saved = {
        k: os.environ.get(k)
        for k in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "RAYMAAS_HOME")
    }
    started = time.monotonic()
    # MLflow as deployed (cluster.yaml's head): a server on PostgreSQL that serves the artifacts,
    # so the nodes log, checkpoint and register through HTTP alone. Entered first, left last.
    database = contextlib.ExitStack()
    try:
        pg = database.enter_context(postgres_server())
        cluster = localcluster.start(
            home,
            num_cpus=0,
            port=port,
            dashboard_port=free_port(),
            mlflow_port=free_port(),
            autoscaling_config=config,
            backend_store_uri=pg.uri,
            artifacts_destination=home / "served-artifacts",
            env={
                "RAY_FAKE_CLUSTER": "1",
                "AUTOSCALER_UPDATE_INTERVAL_S": "1",
                # a node whose raylet died is replaced after this long without a heartbeat
                "AUTOSCALER_HEARTBEAT_TIMEOUT_S": "15",
                # the GCS marks a killed node dead after 5 s of failed health checks (Ray's
                # default: 15 s), before Train decides how many workers a restart can have
                "RAY_health_check_period_ms": "1000",
                "RAY_TRAIN_V2_ENABLED": "1",
            },
        )
        print(f"\nfake cluster: head and MLflow server up in {time.monotonic() - started:.1f} s", flush=True)
        env = {
            **os.environ,
            "RAY_ADDRESS": cluster.gcs_address,
            "RAY_AUTH_MODE": "token",
            "MLFLOW_TRACKING_URI": cluster.mlflow_url,
            "RAYMAAS_HOME": str(home),
            # every fake node is a process on this machine: its disk is shared storage
            "RAYMAAS_SHARED_STORAGE": "1",
            # what the cluster launcher's ~/ray_bootstrap_config.yaml is to a driver on a real
            # head: the node types a sweep counts its trials against
            "RAYMAAS_AUTOSCALING_CONFIG": str(config),
        }
        env.pop("MLFLOW_REGISTRY_URI", None)
        # a shell's (`raymaas up` prints one to export) would win over RAY_ADDRESS, and over any
        # address given, for Ray's State API
        env.pop("RAY_API_SERVER_ADDRESS", None)
        os.environ.update(
            {
                "MLFLOW_TRACKING_URI": cluster.mlflow_url,
                "MLFLOW_REGISTRY_URI": cluster.mlflow_url,
                "RAYMAAS_HOME": str(home),
                "RAY_ADDRESS": cluster.gcs_address,
            }
        )
        os.environ.pop("RAY_API_SERVER_ADDRESS", None)
        mlflow.set_tracking_uri(cluster.mlflow_url)
        mlflow.set_registry_uri(cluster.mlflow_url)
        connect(cluster.gcs_address)
        yield FakeCluster(cluster.gcs_address, cluster.dashboard_url, cluster.mlflow_url, home, env)
    finally:
        ray.shutdown()
        state = localcluster.read_state(home)
        localcluster.stop(home)  # the head, every node it added, the MLflow server: by PID
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        database.close()
        if state is not None:
            gcs_port = int(state.gcs_address.rsplit(":", 1)[1])
            assert not localcluster.head_processes(Path(state.temp_dir), gcs_port), "processes left behind"


# --------------------------------------------------------------------------- helpers


def worker_nodes() -> list[str]:
    """Node ids of the live nodes the autoscaler added (every node but the head)."""
    import ray

    return [n["NodeID"] for n in ray.nodes() if n["Alive"] and "node:__internal_head__" not in n["Resources"]]


def autoscaler_settled(address: str) -> bool:
    """True once the cluster has no worker node left, as the GCS and the autoscaler both see
    it: `ray status` counts the head alone as active and no node pending. ray.nodes() alone
    turns empty while the autoscaler may still be deciding about idle nodes (CI once saw the
    next job's first nodes removed in the same second as the previous test's, and none added
    again)."""
    if worker_nodes():
        return False
    status = ray_status(address)
    if "Active:" not in status or "Pending:" not in status:
        return False  # no answer from the autoscaler yet: not known to be settled
    active = status.split("Active:", 1)[1].split("Pending:", 1)[0]
    pending = status.split("Pending:", 1)[1].split("Recent failures:", 1)[0]
    counted = sum(int(line.split()[0]) for line in active.splitlines() if line.strip()[:1].isdigit())
    return counted <= 1 and "(no pending nodes)" in pending


# Ray's State API below is given the cluster's GCS address rather than left to find a cluster
# itself (RAY_API_SERVER_ADDRESS, RAY_ADDRESS, else the Ray last started on this machine): run
# after other modules in one pytest process, the sweep's test once counted 0 trial actors while
# its 4 trials ran. An address given still loses to those two variables
# (ray.dashboard.utils.get_address_for_submission_client): fake_cluster sets RAY_ADDRESS to the
# same address and removes RAY_API_SERVER_ADDRESS.


def train_worker_actors(address: str) -> list:
    from ray.util.state import list_actors

    return list_actors(address=address, filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")])


def trial_actors(address: str) -> list:
    """Tune's trial actors alive (a one-worker supervised trial trains in its own)."""
    from ray.util.state import list_actors

    return list_actors(address=address, filters=[("class_name", "=", "ImplicitFunc"), ("state", "=", "ALIVE")])


def map_workers(address: str) -> int:
    """Ray Data's model actors alive (its actor pool's MapWorkers)."""
    from ray.util.state import list_actors

    return sum("MapWorker" in a.class_name for a in list_actors(address=address, filters=[("state", "=", "ALIVE")]))


def run_watching(cluster: FakeCluster, cmd: list[str], log: Path, what: str, **counts) -> tuple[int, dict]:
    """cmd run against the cluster to its exit (within 540 s; output to log, a pipe could fill),
    each of counts (name -> a count of the cluster's state) looked at once a second: (its exit
    code, the peak of each count)."""
    driver = subprocess.Popen(cmd, cwd=REPO, env=cluster.env, stdout=log.open("w"), stderr=subprocess.STDOUT, text=True)
    peak = dict.fromkeys(counts, 0)

    def ended() -> bool:
        for name, count in counts.items():
            peak[name] = max(peak[name], count())
        return driver.poll() is not None

    try:
        wait_for(ended, 540, what, interval=1, seen=seen_by(cluster, log))
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait(timeout=30)
    return driver.returncode, peak


def start_driver(cluster: FakeCluster, log: Path, *args: str, env: dict | None = None) -> subprocess.Popen:
    """`python -m jobs.supervised` joining the cluster; output to a file (a pipe could fill)."""
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jobs.supervised",
            str(DEBUG_SPEC),
            "--set",
            "scaling_config.placement_timeout_s=240",
            *args,
        ],
        cwd=REPO,
        env=env or cluster.env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        text=True,
    )


def driver_running(driver: subprocess.Popen, log: Path, predicate):
    """predicate for wait_for that fails at once, with the driver's output, if the driver has
    ended (a wait that times out says nothing of why)."""

    def check():
        value = predicate()
        if not value and driver.poll() is not None:
            raise AssertionError(f"the driver ended (exit {driver.returncode}):\n{log.read_text()[-4000:]}")
        return value

    return check


def seen_by(cluster: FakeCluster, log: Path):
    """What a wait on a job reports when it times out: the driver's output and `ray status`."""
    return lambda: f"driver output:\n{log.read_text()[-3000:]}\n`ray status`:\n{ray_status(cluster.address)}"


def settle(cluster: FakeCluster) -> None:
    """Wait for a cluster with no worker node, as the autoscaler sees it too."""
    wait_for(
        lambda: autoscaler_settled(cluster.address),
        240,
        "no worker nodes (the autoscaler's view included)",
        interval=1,
        seen=lambda: (
            f"{ray_status(cluster.address)}\nwhat keeps the worker nodes busy:\n{on_worker_nodes(cluster.address)}"
        ),
    )


def on_worker_nodes(address: str) -> str:
    """The actors and placement groups alive on worker nodes: what keeps a node from going idle."""
    from ray.util.state import list_actors, list_placement_groups

    nodes = set(worker_nodes())
    actors = [
        f"actor {a.class_name} ({a.name or 'unnamed'}, job {a.job_id}) on {a.node_id[:8]}"
        for a in list_actors(address=address, filters=[("state", "=", "ALIVE")])
        if a.node_id in nodes
    ]
    groups = [
        f"placement group {g.placement_group_id[:8]} ({g.name or 'unnamed'}) {g.state}"
        for g in list_placement_groups(address=address)
        if g.state != "REMOVED"
    ]
    return "\n".join(actors + groups) or "(nothing)"


def runs_named(client, run_name: str):
    return client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        filter_string=f"tags.`{JOB_KEY_TAG}` = '{run_name}'",
    )


def epochs_logged(client, run_name: str) -> list[int]:
    runs = runs_named(client, run_name)
    if not runs:
        return []
    return sorted(m.step for m in client.get_metric_history(runs[0].info.run_id, "val_accuracy"))


def raylet_of(pid: int) -> psutil.Process:
    """The raylet that started the worker process pid: the node it runs on."""
    proc = psutil.Process(pid)
    while proc is not None:
        if proc.name() == "raylet":
            return proc
        proc = proc.parent()
    raise LookupError(f"no raylet above process {pid}")


@pytest.fixture
def client(fake_cluster):
    from raymaas.tracking import get_client

    return get_client(fake_cluster.mlflow_url)


# --------------------------------------------------------------------------- tests


def test_node_local_store_or_checkpoints_are_refused_before_anything_starts(fake_cluster, client, tmp_path):
    jobs = [("jobs.supervised", DEBUG_SPEC), ("jobs.rl", REPO / "jobs/specs/cartpole_ppo_debug.yaml")]
    # The four refusals are independent: their drivers start together and are waited for one by
    # one. Each SQLite case has a file of its own (a driver opens its store, migrations included,
    # before it is refused: two at once on one new file could race).
    started = []
    for module, spec in jobs:
        cases = [
            ({"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / module}-node-local.db"}, "set MLFLOW_TRACKING_URI"),
            ({"RAYMAAS_SHARED_STORAGE": None}, "set RAYMAAS_STORAGE_PATH"),
        ]
        for n, (extra, says) in enumerate(cases):
            log = tmp_path / f"{module}-{n}.log"
            proc = subprocess.Popen(
                [sys.executable, "-m", module, str(spec), "--set", "name=mn-refused"],
                cwd=REPO,
                env=fake_cluster.job_env(**extra),
                stdout=subprocess.DEVNULL,
                stderr=log.open("w"),  # a file, not a pipe: a pipe could fill while another is waited for
            )
            started.append((module, says, proc, log))
    deadline = time.monotonic() + 240
    try:
        for module, says, proc, log in started:
            try:
                proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                raise AssertionError(f"{module} was not refused in 240 s:\n{log.read_text()[-3000:]}") from None
            stderr = log.read_text()
            assert proc.returncode == 2, (module, stderr[-3000:])  # EXIT_INVALID_SPEC
            assert says in stderr and "several nodes" in stderr, (module, stderr[-3000:])
    finally:
        for *_, proc, _log in started:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
    # Nothing started: no MLflow run, no worker node asked for.
    assert client.get_experiment_by_name("mn-refused") is None
    assert worker_nodes() == []


def test_job_spreads_over_added_nodes_resumes_after_a_node_kill_and_nodes_go_when_idle(fake_cluster, client, tmp_path):
    """One training job that cannot fit the 0-CPU head, on a settled cluster: the autoscaler adds
    worker nodes and the two Train workers run one on each; a worker node killed mid-training
    costs a restart from the last checkpoint in the same MLflow run; the model is registered
    through the server and loads back; every worker node goes after the idle timeout."""
    import ray

    run_name = "mn-kill-node-run"
    settle(fake_cluster)
    head = next(n["NodeID"] for n in ray.nodes() if "node:__internal_head__" in n["Resources"])
    submitted = time.monotonic()
    log = tmp_path / "driver.log"
    driver = start_driver(
        fake_cluster,
        log,
        *SLOW_EPOCHS,
        "--set",
        "name=mn-kill",
        "--set",
        f"mlflow.run_name={run_name}",
        "--set",
        "train_loop_config.epochs=5",
        "--set",
        "failure_config.max_failures=3",
    )
    try:
        seen = seen_by(fake_cluster, log)
        # Nodes added and workers spread, before anything is killed.
        wait_for(driver_running(driver, log, lambda: len(worker_nodes()) >= 2), 240, "two worker nodes", seen=seen)
        nodes_up_s = time.monotonic() - submitted
        actors = wait_for(
            driver_running(driver, log, lambda: (a := train_worker_actors(fake_cluster.address)) and len(a) == 2 and a),
            240,
            "two Ray Train workers",
            seen=seen,
        )
        placed = {a.node_id for a in actors}
        added = set(worker_nodes())
        assert len(placed) == 2 and head not in placed, (placed, head)  # one worker on each added node
        assert placed <= added, (placed, added)

        wait_for(
            driver_running(driver, log, lambda: len(epochs_logged(client, run_name)) >= 2), 360, "two epochs", seen=seen
        )
        actor = wait_for(lambda: train_worker_actors(fake_cluster.address), 30, "a Ray Train worker", seen=seen)[0]
        raylet = raylet_of(actor.pid)
        killed_after = epochs_logged(client, run_name)[-1]
        nodes_before = set(worker_nodes())
        killed_at = time.monotonic()
        # The whole node fails at once: its raylet and every process it started (the Train
        # worker, Ray's agents). A raylet killed alone leaves its workers training for a while.
        for proc in [raylet, *raylet.children(recursive=True)]:
            try:
                proc.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
        # Train restarts its worker group on a node with room: a new one the autoscaler adds, or
        # a spare it already had (CI saw the autoscaler keep a third node up for a while, and the
        # restart took it). Either way the run goes on from its last checkpoint.
        wait_for(
            # an epoch no worker alive at the kill could have finished, or the end of the driver
            lambda: driver.poll() is not None or [e for e in epochs_logged(client, run_name) if e > killed_after + 1],
            400,
            "an epoch after the restart (or the driver's end)",
            seen=seen,
        )
        resumed_s = time.monotonic() - killed_at
        new_nodes = set(worker_nodes()) - nodes_before
        # The nodes are idle from when the restarted workers end (the driver then logs the model
        # for a while).
        idle_since = wait_for(
            lambda: not train_worker_actors(fake_cluster.address) and time.monotonic(),
            480,
            "the workers to end",
            1,
            seen=seen,
        )
        driver.wait(timeout=480)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"{exc}; the driver's output:\n{log.read_text()[-4000:]}") from None
    finally:
        if driver.poll() is None:
            driver.kill()
    output = log.read_text()
    assert driver.returncode == 0, output[-4000:]
    assert actor.node_id not in worker_nodes()
    (run,) = runs_named(client, run_name)  # one run, complete
    assert run.info.status == "FINISHED"
    assert int(run.data.tags["raymaas.worker_failures"]) >= 1
    resumed_from = int(run.data.tags["raymaas.resumed_from_epoch"])
    assert 1 <= resumed_from <= killed_after + 2  # the epoch after the last checkpoint, never 0
    assert epochs_logged(client, run_name) == list(range(5))  # each epoch logged once
    # SLOW_EPOCHS' synthetic set: 4 well separated classes (chance 0.25, a linear model ~0.97)
    assert run.data.metrics["val_accuracy"] > 0.8
    (version,) = client.search_model_versions("name='mn-kill'")
    assert version.run_id == run.info.run_id
    # the model went through the server to its artifact store, and comes back from it
    import mlflow
    import numpy as np

    model = mlflow.pyfunc.load_model(f"models:/mn-kill/{version.version}")
    assert model.predict(np.zeros((2, 32), dtype=np.float32)).shape == (2,)  # data.n_features=32

    wait_for(
        lambda: not worker_nodes(),
        240,
        "the idle worker nodes to be removed",
        seen=lambda: ray_status(fake_cluster.address),
    )
    removed_s = time.monotonic() - idle_since
    # ...and none still pending as the autoscaler sees it (a replacement for the killed node may
    # have been launched late): the next test starts from a settled cluster.
    settle(fake_cluster)
    print(
        f"\nautoscaler: submission -> 2 worker nodes up: {nodes_up_s:.1f} s; workers ended (nodes idle) -> "
        f"nodes removed: {removed_s:.1f} s (idle timeout {IDLE_TIMEOUT_MINUTES * 60:.0f} s)"
        f"\nnode kill: killed after epoch {killed_after}; {resumed_s:.1f} s later an epoch after the restart "
        f"was logged ({'on a new node' if new_nodes else 'on a node the cluster had'}); resumed from epoch {resumed_from}",
        flush=True,
    )


def test_sweep_puts_trials_in_flight_for_the_nodes_the_cluster_can_grow_to(fake_cluster, client, tmp_path):
    """A 4-trial sweep on a cluster with no worker node (and a head with no CPU): the sweep counts
    its trials against the node types' max_workers, not the empty cluster, so three trials wait
    pending at once and the autoscaler adds the nodes they ask for; one parent, four children."""
    from raymaas.sweep.job import SWEEP_TAG

    run_name = "mn-sweep-run"
    settle(fake_cluster)
    log = tmp_path / "sweep.log"
    returncode, peak = run_watching(
        fake_cluster,
        [
            sys.executable,
            "-m",
            "jobs.sweep",
            str(REPO / "jobs/specs/digits_sweep_debug.yaml"),
            "--set",
            "name=mn-sweep",
            "--set",
            f"mlflow.run_name={run_name}",
            "--set",
            "scaling_config.placement_timeout_s=240",
        ],
        log,
        "the sweep to end",
        nodes=lambda: len(worker_nodes()),
        trials=lambda: len(trial_actors(fake_cluster.address)),
    )
    output = log.read_text()
    assert returncode == 0, output[-4000:]
    # 1 CPU a trial (one worker: it trains in the trial's own process), 3 nodes of 1 CPU at most
    assert "up to 3 trials at once" in output and "the cluster can grow to CPU 3" in output, output[-4000:]
    assert peak["nodes"] >= 2 and peak["trials"] >= 2, peak
    experiment = client.get_experiment_by_name("mn-sweep").experiment_id
    (parent,) = client.search_runs([experiment], filter_string=f"tags.`{SWEEP_TAG}` = 'parent'")
    assert parent.info.status == "FINISHED"
    children = client.search_runs([experiment], filter_string=f"tags.`{SWEEP_TAG}` = '{run_name}'")
    assert len(children) == 4 and all(c.info.status == "FINISHED" for c in children), [
        (c.info.run_name, c.info.status) for c in children
    ]
    settle(fake_cluster)
    print(f"\nsweep on an empty cluster: peak {peak['nodes']} worker nodes, {peak['trials']} trials training at once")


def set_max_workers(cluster: FakeCluster, count: int) -> None:
    """Rewrite the autoscaler's cap on worker nodes (Ray's autoscaler reads its config file again
    on every update): a cloud out of capacity, as the cluster sees it."""
    path = Path(cluster.env["RAYMAAS_AUTOSCALING_CONFIG"])
    config = yaml.safe_load(path.read_text())
    config["max_workers"] = count
    config["available_node_types"][WORKER_TYPE]["max_workers"] = count
    path.write_text(yaml.safe_dump(config))


def test_elastic_job_grows_with_nodes_and_finishes_with_fewer_after_a_node_is_lost(fake_cluster, client, tmp_path):
    """num_workers [1, 2]: the job starts once one worker fits and grows to two as the autoscaler
    adds nodes. Late in the run a worker's node is killed: the group restarts with the one node
    left, from the last checkpoint, in the same MLflow run, and finishes on it (the autoscaler
    replaces the node, but the group looks for room to grow only every resize_interval_s, after
    the run's end). Each epoch logs the group's size."""
    run_name, epochs = "mn-elastic-run", 30
    settle(fake_cluster)
    # Two worker nodes at most: the lost node's replacement comes only once the autoscaler has
    # given up on it (AUTOSCALER_HEARTBEAT_TIMEOUT_S, 15 s), not from a third slot at once.
    set_max_workers(fake_cluster, 2)
    log = tmp_path / "elastic.log"
    driver = start_driver(
        fake_cluster,
        log,
        *SLOW_EPOCHS,
        "--set",
        "name=mn-elastic",
        "--set",
        f"mlflow.run_name={run_name}",
        "--set",
        f"train_loop_config.epochs={epochs}",
        "--set",
        "scaling_config.num_workers=[1, 2]",
        "--set",
        # Short enough for a group that started on one node to grow within the run, longer than
        # the run's last epochs after the loss (at most 5 of ~1 s on one worker, after a restart)
        "scaling_config.resize_interval_s=20",
        "--set",
        "failure_config.max_failures=5",
        # Right after the loss Train still counts the dead node's CPU and waits for a group of
        # two; after 8 s it decides again, on what the GCS says is alive: one worker.
        env=fake_cluster.job_env(RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S="8"),
    )

    def sizes() -> dict[int, int]:
        runs = runs_named(client, run_name)
        if not runs:
            return {}
        return {m.step: int(m.value) for m in client.get_metric_history(runs[0].info.run_id, "workers")}

    def late_on_two() -> bool:
        size = sizes()
        return bool(size) and size[max(size)] == 2 and max(size) >= epochs - 5

    try:
        seen = seen_by(fake_cluster, log)
        wait_for(driver_running(driver, log, late_on_two), 400, "a late epoch trained by 2 workers", seen=seen)
        actor = wait_for(lambda: train_worker_actors(fake_cluster.address), 30, "a Ray Train worker", seen=seen)[0]
        raylet = raylet_of(actor.pid)
        for proc in [raylet, *raylet.children(recursive=True)]:
            try:
                proc.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
        killed_after = max(sizes())
        driver.wait(timeout=480)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"{exc}; the driver's output:\n{log.read_text()[-4000:]}") from None
    finally:
        set_max_workers(fake_cluster, MAX_WORKERS)
        if driver.poll() is None:
            driver.kill()
    output = log.read_text()
    assert driver.returncode == 0, output[-4000:]
    (run,) = runs_named(client, run_name)
    assert run.info.status == "FINISHED"
    assert run.data.params["scaling_config.num_workers"] == "[1, 2]" and run.data.tags["num_workers"] == "1-2"
    assert int(run.data.tags["raymaas.worker_failures"]) >= 1
    assert 1 <= int(run.data.tags["raymaas.resumed_from_epoch"]) <= killed_after + 2, run.data.tags
    size = sizes()
    assert sorted(size) == list(range(epochs)), size  # every epoch, in one run
    assert size[killed_after] == 2 and size[epochs - 1] == 1, size  # finished with fewer workers
    assert "on 1 worker " in output and "on 2 workers" in output, output[-3000:]
    settle(fake_cluster)
    print(f"\nelastic job: workers per epoch {[size[e] for e in sorted(size)]}; node killed after epoch {killed_after}")


def test_batch_scoring_pool_grows_with_nodes_the_autoscaler_adds(fake_cluster, client, tmp_path):
    """`raymaas predict --actors 1:3` on an empty cluster: its pending actor (and read task) make
    the autoscaler add nodes, and the job starts once one actor fits; while it scores it asks
    for room for its MAX, and the cluster grows for it (Ray Data adds actors there when its own
    actor autoscaler calls for them). Every row scored once, in one run."""
    import mlflow
    import numpy as np
    import pandas as pd
    import torch

    from raymaas.modelcode.pyfunc import log_classifier
    from raymaas.tracking import ensure_experiment

    name, width, n_files, rows = "mn-batch", 16, 64, 2500
    mlflow.set_experiment(experiment_id=ensure_experiment(client, "mn-batch"))
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(width, 64), torch.nn.ReLU(), torch.nn.Linear(64, 3))
    rng = np.random.default_rng(0)
    with mlflow.start_run(run_name="batch-model"):
        info = log_classifier(module, rng.normal(size=(8, width)).astype(np.float32))
    version = mlflow.register_model(info.model_uri, name).version
    client.set_registered_model_alias(name, "champion", version)
    source, out = tmp_path / "table", tmp_path / "scores"
    source.mkdir()
    for k in range(n_files):
        frame = pd.DataFrame(rng.normal(size=(rows, width)).astype(np.float32), columns=[f"x{i}" for i in range(width)])
        frame.insert(0, "id", np.arange(k * rows, (k + 1) * rows, dtype=np.int64))
        frame.to_parquet(source / f"part-{k:02d}.parquet")

    settle(fake_cluster)
    log = tmp_path / "predict.log"
    returncode, peak = run_watching(
        fake_cluster,
        [
            sys.executable,
            "-m",
            "raymaas.cli",
            "predict",
            name,
            str(source),
            str(out),
            "--passthrough",
            "id",
            "--actors",
            "1:3",
            "--batch-size",
            "4",  # many small batches: a pool busy for long enough to grow
            "--placement-timeout-s",
            "240",
            "--run-name",
            "mn-batch-run",
        ],
        log,
        "the batch job to end",
        nodes=lambda: len(worker_nodes()),
        actors=lambda: map_workers(fake_cluster.address),
    )
    output = log.read_text()
    assert returncode == 0, output[-4000:]
    assert "on 1 to 3 actors" in output, output[-3000:]
    # start-up: the pending actor and read task of an empty cluster got their nodes (2 of 1 CPU);
    # then the pool asked for room for its MAX, and the cluster grew to its 3 nodes. Whether Ray
    # Data puts a second actor there is its own actor autoscaler's call (an operator's share of
    # 3 one-CPU nodes held it at one actor here): printed, not asserted.
    assert peak["actors"] >= 1 and peak["nodes"] >= 3, (peak, output[-3000:])
    scored = pd.read_parquet(out)
    assert sorted(scored["id"]) == list(range(n_files * rows))
    (run,) = runs_named(client, "mn-batch-run") or client.search_runs(
        [client.get_experiment_by_name("mn-batch").experiment_id], filter_string="tags.`raymaas.job_kind` = 'predict'"
    )
    assert run.info.status == "FINISHED" and run.data.tags["raymaas.actors"] == "1:3"
    settle(fake_cluster)
    print(f"\nbatch scoring on an empty cluster: peak {peak['actors']} model actors on {peak['nodes']} worker nodes")


def test_serve_replicas_and_nodes_follow_the_load(fake_cluster, client):
    import mlflow
    import numpy as np
    import torch
    from ray import serve

    from raymaas.modelcode.pyfunc import log_classifier
    from raymaas.serving import ENDPOINT_DEPLOYMENT, ServeSpec, build_model_app
    from raymaas.tracking import ensure_experiment

    name = "mn-serve-tiny"
    mlflow.set_experiment(experiment_id=ensure_experiment(client, "mn-serve"))
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    with mlflow.start_run(run_name="tiny"):
        info = log_classifier(module, np.random.default_rng(0).random((8, 64), dtype=np.float32))
    version = mlflow.register_model(info.model_uri, name).version
    client.set_registered_model_alias(name, "champion", version)

    spec = ServeSpec.model_validate(
        {
            "models": [{"name": name}],
            # one replica per node: each asks for a whole CPU, and a node has one
            "autoscaling_config": {
                "min_replicas": 1,
                "max_replicas": 3,
                "target_ongoing_requests": 1,
                "upscale_delay_s": 1,
                "downscale_delay_s": 5,
            },
            "ray_actor_options": {"num_cpus": 1},
            "tracking_uri": fake_cluster.mlflow_url,
        }
    )
    port = free_port()
    # one HTTP proxy, on the head: every fake node shares this machine's ports
    serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
    url = f"http://127.0.0.1:{port}{spec.route_prefix}/invocations"

    def replicas() -> int:
        app = serve.status().applications.get("mn-serve")
        if app is None:
            return 0
        # the model's replicas (not its MonitorHub's, one replica of no CPU beside them)
        endpoint = app.deployments.get(ENDPOINT_DEPLOYMENT)
        return endpoint.replica_states.get("RUNNING", 0) if endpoint else 0

    def serving_seen() -> str:
        app = serve.status().applications.get("mn-serve")
        answered = {c: codes.count(c) for c in set(codes)}
        return f"application: {app}\nanswers so far: {answered}\n`ray status`:\n{ray_status(fake_cluster.address)}"

    # From a settled cluster: an earlier test's idle node may not be removed yet (seen once in
    # CI: two worker nodes right after serve.run, one of them left from the test before).
    settle(fake_cluster)
    try:
        serve.run(build_model_app(spec), name="mn-serve", route_prefix=spec.route_prefix)
        assert replicas() == 1 and len(worker_nodes()) == 1
        body = ('{"inputs": ' + str(np.random.default_rng(1).random((4, 64)).round(3).tolist()) + "}").encode()
        stop, codes, peak = threading.Event(), [], {"replicas": 1, "nodes": 1}

        def client_loop():
            while not stop.is_set():
                req = urllib.request.Request(url, data=body, headers={"content-type": "application/json"})
                try:
                    with urllib.request.urlopen(req, timeout=30) as resp:
                        resp.read()
                        codes.append(resp.status)
                except urllib.error.HTTPError as err:
                    codes.append(err.code)
                except OSError:
                    codes.append(0)

        load_started = time.monotonic()
        threads = [threading.Thread(target=client_loop, daemon=True) for _ in range(8)]
        for t in threads:
            t.start()
        try:

            def scaled_out():
                peak["replicas"] = max(peak["replicas"], replicas())
                peak["nodes"] = max(peak["nodes"], len(worker_nodes()))
                return peak["replicas"] >= 3

            wait_for(scaled_out, 300, "3 replicas under load", interval=1, seen=serving_seen)
            scaled_out_s = time.monotonic() - load_started
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=60)
        load_stopped = time.monotonic()
        assert peak["nodes"] >= 3  # a node for each replica
        assert codes and codes.count(200) == len(codes), {c: codes.count(c) for c in set(codes)}

        wait_for(lambda: replicas() == 1, 240, "replicas back to 1", interval=1, seen=serving_seen)
        scaled_in_s = time.monotonic() - load_stopped
        wait_for(lambda: len(worker_nodes()) == 1, 240, "idle nodes removed", interval=1, seen=serving_seen)
        nodes_removed_s = time.monotonic() - load_stopped
        print(
            f"\nserve autoscaling: {len(codes)} requests, all 200; load start -> 3 replicas on 3 nodes: "
            f"{scaled_out_s:.1f} s; load stop -> 1 replica: {scaled_in_s:.1f} s, -> 1 node: {nodes_removed_s:.1f} s",
            flush=True,
        )
    finally:
        serve.shutdown()
