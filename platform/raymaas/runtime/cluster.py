"""Connecting to Ray, shipping the platform's code, and checking what a job asks for: its
resources, its GPUs, and storage every node of a multi-node cluster can reach."""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import ray

from raymaas.paths import SHARED_STORAGE_ENV, STORAGE_PATH_ENV, forwarded_env
from raymaas.specs import SpecError

# Filesystem types (/proc/mounts) that other machines can mount too.
_NETWORK_FS = (
    "nfs",
    "nfs4",
    "cifs",
    "smb3",
    "smbfs",
    "lustre",
    "ceph",
    "glusterfs",
    "gpfs",
    "beegfs",
    "fuse.s3fs",
    "fuse.gcsfuse",
    "fuse.goofys",
    "fuse.mountpoint-s3",
    "fuse.juicefs",
    "fuse.sshfs",
)


class ResourceError(RuntimeError):
    """The cluster cannot give a job what its spec asks for."""


class NodeLocalStorageError(SpecError):
    """A job that may run on several nodes names a tracking store or checkpoint storage that
    only one node can reach. An invalid spec, as far as exit codes go (2)."""


def raymaas_code_dir() -> str:
    import raymaas

    return str(Path(raymaas.__file__).parent)


# The Ray settings a job's processes get: this process's own value of each, else its default
# here; one marked FORWARDED has no default and is set only where this process sets it.
# job_env() adds raymaas.paths.FORWARDED_ENV, where the job tracks and keeps checkpoints.
FORWARDED = None
JOB_RAY_ENV: dict[str, str | None] = {
    # Train V2's controller collects each worker's report on its health-check poll, every 2 s by
    # default: a 20-epoch job of 0.2 s epochs then took 2 s an epoch and the end of fit() waited
    # for the next poll. A poll every 0.2 s costs the controller a few remote calls a second.
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2",
    # How long Ray Train waits for a (re)started worker group before it decides again how many
    # workers fit.
    "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": FORWARDED,
}


def ray_job_env() -> dict[str, str]:
    """JOB_RAY_ENV as a job gets it: this process's value of each, else its default."""
    values = {k: os.environ.get(k, default) for k, default in JOB_RAY_ENV.items()}
    return {k: v for k, v in values.items() if v is not None}


def job_env() -> dict[str, str]:
    """The environment a job's Ray processes get: ray_job_env() and raymaas.paths.FORWARDED_ENV
    as this process has them."""
    return {**ray_job_env(), **forwarded_env()}


def connect(
    address: str | None = None,
    num_cpus: int | None = None,
    py_modules: list[str] = (),
    prestart_workers: bool = True,
    log_to_driver: bool = True,
    object_store_memory: int | None = None,
    include_dashboard: bool = False,
) -> None:
    """Join the cluster at address (or RAY_ADDRESS), or start a local Ray in this process.

    On an existing cluster the platform's code (and py_modules, a user's own packages)
    travels with the job, so nodes need only the third-party packages. prestart_workers=False
    tells a local Ray not to start its idle worker processes (one per CPU) ahead of need: a
    job that runs everything in the driver uses none, and on a small machine they compete
    with the driver for the CPU while Ray starts. log_to_driver=False leaves the output of Ray's
    processes in Ray's log folder (`ray_logs_dir()`) instead of this process's output.
    object_store_memory sizes a local Ray's object store (Ray's default otherwise).
    include_dashboard starts a local Ray's dashboard (off by default: seconds and ~300 MB);
    Ray's State API, which some of Ray's own actors rely on, lives in it.
    """
    if ray.is_initialized():
        return
    # Ray 2.60 says on every start that token auth is on (its default); jobs need not repeat it.
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    address = address or os.environ.get("RAY_ADDRESS")
    env_vars = job_env()
    os.environ.update({k: v for k, v in env_vars.items() if k in JOB_RAY_ENV})  # for a local Ray's processes
    runtime_env = _without_job_fields({"py_modules": [raymaas_code_dir(), *py_modules], "env_vars": env_vars})
    if address:
        _use_token_auth_if_available()
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=log_to_driver, logging_level=logging.WARNING)
        if autoscaler_may_add_nodes():
            keep_coordinator_on_head()
    else:
        # "local": a fresh Ray in this process even if `ray start` left a cluster address
        # behind (ray.init() would join that one).
        system = {} if prestart_workers else {"enable_worker_prestart": False, "prestart_worker_first_driver": False}
        ray.init(
            address="local",
            num_cpus=num_cpus,
            object_store_memory=object_store_memory,
            include_dashboard=include_dashboard,
            runtime_env={"env_vars": env_vars},
            _system_config=system or None,
            log_to_driver=log_to_driver,
            logging_level=logging.WARNING,
        )


def ray_logs_dir() -> str | None:
    """The log folder of the Ray session this process is connected to (on this node)."""
    try:
        return ray._private.worker.global_worker.node.get_logs_dir_path()
    except AttributeError:
        return None


def package_dir_of(module_name: str) -> str | None:
    """The folder of the top-level package holding module_name, unless it is installed
    (site-packages) or a lone module file, which Ray cannot ship as a package."""
    import importlib.util

    top = module_name.split(".")[0]
    found = importlib.util.find_spec(top)
    if found is None or not found.submodule_search_locations:
        return None
    folder = Path(next(iter(found.submodule_search_locations))).resolve()
    if "site-packages" in folder.parts or folder == Path(raymaas_code_dir()).resolve():
        return None
    return str(folder)


def ensure_auth_token() -> str:
    """The path of Ray's saved token (~/.ray/auth_token), generated first if there is none.

    `ray start --head` turns token auth on only when a token is already saved, and a local
    `ray.init()` saves one as a side effect: on a machine that never ran Ray, a head started
    first ran without auth while the drivers told to use token mode failed ("no
    authentication token was found"). Called before every head this project starts.
    """
    from ray._private.authentication.authentication_token_setup import (
        _get_default_token_path,
        generate_and_save_token,
    )
    from ray._raylet import AuthenticationTokenLoader

    loader = AuthenticationTokenLoader.instance()
    if not loader.has_token(ignore_auth_mode=True):  # RAY_AUTH_TOKEN(_PATH) or ~/.ray/auth_token
        generate_and_save_token()
        loader.reset_cache()
    return str(_get_default_token_path())


def _use_token_auth_if_available() -> None:
    # Ray 2.60 turns token auth on for clusters it starts, but a driver joining one by
    # explicit address only sends the saved token (~/.ray/auth_token) in token mode; without
    # it the GCS answers "InvalidAuthToken" and ray.init fails with a bare ConnectionError.
    # Ray's own helper flips the mode and refreshes its cached config, which an environment
    # variable set after `import ray` would not.
    if "RAY_AUTH_MODE" in os.environ:
        return
    from ray._private.authentication.authentication_token_setup import (
        maybe_enable_token_auth_if_token_available,
    )

    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


def _without_job_fields(runtime_env: dict) -> dict:
    """Drop the fields a `ray job submit` job already sets: Ray refuses to merge a driver's
    runtime env with the job's when both set the same field ("Failed to merge the Job's
    runtime env"), and the job's own copy is what its workers get anyway."""
    job_config = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    if not job_config:
        return runtime_env
    job_fields = json.loads(job_config).get("runtime_env") or {}
    return {k: v for k, v in runtime_env.items() if k not in job_fields}


def resolve_use_gpu(use_gpu: bool | str) -> bool:
    """`auto` means GPUs if the cluster has any."""
    if use_gpu == "auto":
        return ray.cluster_resources().get("GPU", 0) > 0
    return bool(use_gpu)


# How long the autoscaler keeps what a job asked for after the job last asked: it bridges the
# seconds between the resources showing up and the job's own workers taking them (Ray Train
# then asks for its workers itself), so the new nodes are not removed as idle meanwhile.
RESOURCE_REQUEST_HOLD_S = 60.0


def wait_for_resources(
    needed: dict[str, float], timeout_s: float, bundles: list[dict[str, float]] | None = None, hold: bool = True
) -> None:
    """Return once the cluster's total resources cover needed; else raise ResourceError.
    bundles (one per worker, default one bundle of needed) is what the autoscaler is asked for:
    a single bundle larger than any node type would never be granted. hold=False withdraws the
    request once it is met, for a job whose own next step asks again at once (an elastic Ray
    Train group asks for its max): held, both requests add up to nodes nobody uses.

    Ray's default for an impossible request is a silent retry loop, so a job asking for GPUs
    a cluster will never have would look like a hang. An autoscaling cluster may still be
    adding nodes: raise placement_timeout_s there, and the request is passed on to the
    autoscaler meanwhile, through Ray's AutoscalingCoordinator: Ray Data and Ray Train V2 send
    their requests through that detached actor, which hands the autoscaler the merged set of
    all requests and so replaces any request made with `ray.autoscaler.sdk.request_resources`
    directly. Made directly, this job's request was wiped by the next job on a cluster where a
    Train or Data job had run before: the nodes it had asked for came up, were removed as idle,
    and the job waited for its timeout (CI saw it as a multi-node test that failed now and then).
    """
    wanted = [{k: v for k, v in b.items() if v} for b in (bundles if bundles is not None else [needed])]
    asker = _ResourceRequest(wanted)
    deadline = time.monotonic() + timeout_s
    while True:
        total = ray.cluster_resources()
        short = {k: (v, total.get(k, 0)) for k, v in needed.items() if total.get(k, 0) < v}
        if not short:
            if not hold:
                asker.cancel()
            return  # what was asked for (if anything) expires by itself: see RESOURCE_REQUEST_HOLD_S
        asker.ask()
        if time.monotonic() >= deadline:
            asker.cancel()
            parts = ", ".join(f"{k}: needs {want:g}, cluster has {have:g}" for k, (want, have) in short.items())
            hint = " Set scaling_config.use_gpu: false (or auto)." if "GPU" in short else ""
            raise ResourceError(
                f"the cluster cannot provide what the job asks for within {timeout_s:g}s ({parts}).{hint}"
                " For an autoscaling cluster that adds nodes on demand, raise scaling_config.placement_timeout_s."
            )
        time.sleep(0.5)


def keep_coordinator_on_head() -> None:
    """Make sure Ray's AutoscalingCoordinator (see wait_for_resources) lives on the head.

    Ray Data creates that detached actor on the node of whoever asks first, pinned there for the
    cluster's life. Asked first from a worker node (a sweep's trial waiting for its workers, an
    elastic Train controller), it kept that node busy forever: the autoscaler never removed it
    as idle. Created here, from the driver's node when that is the head, else by a task pinned
    to the head, every later ask finds this one."""
    from ray.data._internal.cluster_autoscaler.default_autoscaling_coordinator import (
        get_or_create_autoscaling_coordinator,
    )
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    head = next(
        (n["NodeID"] for n in ray.nodes() if n.get("Alive") and "node:__internal_head__" in n["Resources"]), None
    )
    if head is None or head == ray.get_runtime_context().get_node_id():
        get_or_create_autoscaling_coordinator()
        return

    @ray.remote(num_cpus=0)
    def create() -> None:
        get_or_create_autoscaling_coordinator()

    ray.get(create.options(scheduling_strategy=NodeAffinitySchedulingStrategy(head, soft=False)).remote())


class holding_request:
    """`with holding_request(bundles):` keeps asking the autoscaler for bundles (renewed in a
    thread, through the AutoscalingCoordinator as wait_for_resources does) until the block ends,
    then withdraws it. For work that can use more than it started with (a batch job's actor pool
    up to its MAX): the nodes come, and the work grows onto them. Nothing is asked of a cluster
    whose autoscaler cannot add nodes."""

    def __init__(self, bundles: list[dict[str, float]]):
        self.bundles = [{k: v for k, v in b.items() if v} for b in bundles]
        self._stop = None
        self._thread = None
        self._asker = None

    def __enter__(self) -> holding_request:
        import threading

        if not self.bundles or not autoscaler_may_add_nodes():
            return self
        self._asker = _ResourceRequest(self.bundles)
        self._stop = threading.Event()

        def renew() -> None:
            while True:
                try:
                    self._asker.ask()
                except Exception as err:  # the work goes on with the nodes it has
                    logging.getLogger(__name__).warning("could not ask the autoscaler for nodes: %s", err)
                    return
                if self._stop.wait(_ResourceRequest.RENEW_EVERY_S):
                    return

        self._thread = threading.Thread(target=renew, name="raymaas-resource-request", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join(timeout=30)
        try:
            self._asker.cancel()
        except Exception:  # Ray shutting down: the request expires by itself
            pass


class _ResourceRequest:
    """This job's request to the autoscaler, through Ray's AutoscalingCoordinator (see
    wait_for_resources), renewed every few seconds while the job waits."""

    RENEW_EVERY_S = 5.0

    def __init__(self, bundles: list[dict[str, float]]):
        self.bundles = bundles
        self.asked_at: float | None = None
        self._coordinator = None

    def ask(self) -> None:
        now = time.monotonic()
        if self.asked_at is not None and now - self.asked_at < self.RENEW_EVERY_S:
            return
        self.asked_at = now
        if self._coordinator is None:
            # Ray's own client of the coordinator (what Ray Data uses); imported here because
            # only a job that must wait for nodes needs it.
            from ray.data._internal.cluster_autoscaler.default_autoscaling_coordinator import (
                DefaultAutoscalingCoordinator,
            )

            self._coordinator = DefaultAutoscalingCoordinator(f"raymaas-{ray.get_runtime_context().get_job_id()}")
        self._coordinator.request_resources(self.bundles, expire_after_s=RESOURCE_REQUEST_HOLD_S)

    def cancel(self) -> None:
        if self._coordinator is not None:
            self._coordinator.cancel_request()


# --------------------------------------------------------------------------- multi-node checks


def is_multi_node() -> bool:
    """Whether a job on the cluster this driver joined may run on more than one node: the
    cluster has several live nodes, or an autoscaler that may add some. A local Ray, or a
    lone `ray start --head` (`raymaas up`), is one node."""
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    return len(nodes) > 1 or autoscaler_may_add_nodes()


def check_multi_node_storage(tracking_uri: str, storage_path: str) -> None:
    """Refuse a job that may run on several nodes when its MLflow store or its checkpoint
    storage is reachable from one node only; say what to set. Call after joining the cluster
    and before anything is submitted to it."""
    if not is_multi_node():
        return
    problems = []
    local_tracking = node_local_tracking_uri(tracking_uri)
    if local_tracking:
        problems.append(
            f"its MLflow tracking URI {tracking_uri} is {local_tracking}: set MLFLOW_TRACKING_URI to an MLflow "
            "tracking server every node reaches (http://HEAD:5000 on a cluster from cluster.yaml; "
            "`raymaas up` prints one for this machine)"
        )
    local_storage = node_local_storage(storage_path)
    if local_storage:
        problems.append(
            f"its checkpoint storage {storage_path} is {local_storage}: set {STORAGE_PATH_ENV} to s3://BUCKET/PATH, "
            f"gs://BUCKET/PATH or a folder on a filesystem every node mounts (NFS); if that folder is shared "
            f"in a way raymaas cannot see, declare it with {SHARED_STORAGE_ENV}=1"
        )
    if problems:
        raise NodeLocalStorageError(
            "this job may run on several nodes of the cluster, but " + "; and ".join(problems) + "."
        )


def node_local_tracking_uri(uri: str) -> str | None:
    """Why an MLflow tracking URI is reachable from one node only, or None if every node can use it."""
    from urllib.parse import urlparse

    parsed = urlparse(uri)
    scheme = parsed.scheme.lower()
    if uri.strip() == "databricks":  # a hosted server, named without a scheme
        return None
    if scheme.startswith("sqlite") or scheme in ("", "file"):
        return "a file on one node (SQLite or a file store)"
    if scheme in ("http", "https") and _is_loopback(parsed.hostname or ""):
        ips = {n["NodeManagerAddress"] for n in ray.nodes() if n.get("Alive")}
        if len(ips) > 1:  # nodes on other machines: their 127.0.0.1 is not this one
            return f"a server on {parsed.hostname}, which other machines of the cluster cannot reach"
    return None


def node_local_storage(path: str) -> str | None:
    """Why a Ray Train storage path is reachable from one node only, or None if it is shared."""
    from urllib.parse import urlparse

    scheme = urlparse(path).scheme.lower()
    if scheme and scheme != "file" and len(scheme) > 1:  # s3://, gs://, abfs://, hdfs://, ...
        return None
    if os.environ.get(SHARED_STORAGE_ENV, "").strip().lower() in ("1", "true", "yes"):
        return None
    folder = Path(path.removeprefix("file://")).expanduser()
    if _filesystem_type(folder) in _NETWORK_FS:
        return None
    return "a folder on this node's own disk"


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _filesystem_type(folder: Path) -> str | None:
    """The type (/proc/mounts) of the filesystem holding folder, or of its nearest existing parent."""
    try:
        mounts = [line.split()[1:3] for line in Path("/proc/mounts").read_text().splitlines()]
    except OSError:
        return None
    folder = folder.resolve()
    best, fs_type = "", None
    for mount_point, kind in mounts:
        mount_point = mount_point.replace("\\040", " ")
        if (folder == Path(mount_point) or Path(mount_point) in folder.parents) and len(mount_point) > len(best):
            best, fs_type = mount_point, kind
    return fs_type


def autoscaler_may_add_nodes() -> bool:
    """Whether the cluster runs Ray's autoscaler with node types it can launch.

    Every `ray start --head` runs Ray's monitor; without --autoscaling-config its provider is
    read-only and names each node's type after the node ("node_<id>"), which a config with
    real node types never does. Autoscaler v2 instead keeps its cluster config in the GCS.
    """
    try:
        from ray.autoscaler._private.util import format_readonly_node_type
        from ray.experimental.internal_kv import _internal_kv_get

        raw = _internal_kv_get("__autoscaling_status")
        report = (json.loads(raw) if raw else {}).get("autoscaler_report") or {}
        types = {**(report.get("node_type_mapping") or {})}
        if any(kind != format_readonly_node_type(node) for node, kind in types.items()):
            return True
        if report.get("pending_nodes") or report.get("pending_launches"):
            return True
        from ray._private.state import state

        return state.get_cluster_config() is not None
    except Exception:  # no autoscaler status (yet), or a format this version does not know
        return False


# --------------------------------------------------------------------------- what the cluster can grow to

AUTOSCALING_CONFIG_ENV = "RAYMAAS_AUTOSCALING_CONFIG"
# Where the cluster launcher (`ray up cluster.yaml`) leaves the autoscaler's config on the head,
# which is where a `ray job submit` driver runs.
BOOTSTRAP_CONFIG = Path("~/ray_bootstrap_config.yaml")


@dataclass(frozen=True)
class Capacity:
    """The most a cluster can hold at once: resource -> amount, and where that figure came from."""

    resources: dict[str, float]
    source: str

    def describe(self) -> str:
        shown = ", ".join(f"{k} {v:g}" for k, v in sorted(self.resources.items()) if k in ("CPU", "GPU"))
        return f"{shown or 'no CPU'} ({self.source})"


def growth_capacity() -> Capacity:
    """What the cluster this driver joined can grow to: the live head plus every worker node
    type at its max_workers (the cluster-wide max_workers capping the count), so that a sweep
    can put enough trials in flight for the autoscaler to see them pending and add nodes.

    Read from, in order: the cluster config Ray keeps in its GCS (autoscaler v2, KubeRay: what
    Ray Train V2 itself checks against); the autoscaler's config file named by
    RAYMAAS_AUTOSCALING_CONFIG, or the one the cluster launcher leaves on the head
    (~/ray_bootstrap_config.yaml); else what the cluster has now (a cluster without an
    autoscaler does not grow). A node type whose resources the file leaves for the provider to
    detect (`resources: {}`) counts only through its live nodes: say them in the config to
    count them before they exist (cluster.yaml does).
    """
    now = {k: float(v) for k, v in ray.cluster_resources().items()}
    try:
        from ray._private.state import state

        from_gcs = state.get_max_resources_from_cluster_config()
    except Exception:  # no GCS config API in this version, or nothing kept there
        from_gcs = None
    if from_gcs:
        grown = {k: float(v) for k, v in from_gcs.items()}
        return Capacity({k: max(grown.get(k, 0.0), now.get(k, 0.0)) for k in {*grown, *now}}, "the GCS cluster config")
    named = os.environ.get(AUTOSCALING_CONFIG_ENV)
    path = Path(named).expanduser() if named else BOOTSTRAP_CONFIG.expanduser()
    if (named or path.is_file()) and autoscaler_may_add_nodes():
        import yaml

        try:
            config = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as err:
            raise ResourceError(f"{path}: cannot read the autoscaler's config ({err})") from err
        head = next(
            (n["Resources"] for n in ray.nodes() if n.get("Alive") and "node:__internal_head__" in n["Resources"]), {}
        )
        return Capacity(capacity_of_config(config, head, now), f"the autoscaler's node types in {path}")
    return Capacity(now, "the cluster's nodes now: no autoscaler that adds nodes")


def capacity_of_config(config: dict, head: dict[str, float], now: dict[str, float]) -> dict[str, float]:
    """An autoscaler config's ceiling: the head's resources as they are plus, for each resource,
    the worker types richest in it at their max_workers until the config's own max_workers (the
    cluster-wide cap on worker nodes). Each resource's figure is its own best case (CPUs from
    the CPU nodes, GPUs from the GPU nodes); never below what the cluster has now."""
    types = config.get("available_node_types") or {}
    head_type = config.get("head_node_type")
    workers = [
        ({k: float(v) for k, v in (t.get("resources") or {}).items()}, int(t.get("max_workers", 0)))
        for name, t in types.items()
        if name != head_type
    ]
    cap = int(config.get("max_workers", sum(count for _, count in workers)))
    total = {k: float(v) for k, v in head.items() if not k.startswith("node:")}
    for key in {k for resources, _ in workers for k in resources}:
        room = cap
        for resources, count in sorted(workers, key=lambda w: -w[0].get(key, 0.0)):
            taken = min(count, room)
            room -= taken
            total[key] = total.get(key, 0.0) + resources.get(key, 0.0) * taken
    # A type the file does not size (resources: {}) still counts with what its nodes have now.
    return {k: max(total.get(k, 0.0), now.get(k, 0.0)) for k in {*total, *now}}
