"""Deploying from this driver (`raymaas serve`): the applications of a Serve config file, or
registered models named on the command line, each its own application."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from raymaas.model_refs import ModelRef
from raymaas.serving.specs import ModelEndpointSpec

DEFAULT_CONFIG = "serve/config.yaml"
CONFIG_SUFFIXES = (".yaml", ".yml", ".json")
INDEX_APP = "index"


@dataclass(frozen=True)
class DeployedApp:
    """Where one deployed application answers."""

    name: str
    route_prefix: str
    base_url: str

    @property
    def url(self) -> str:
        return self.base_url + self.route_prefix.rstrip("/")


def deploy_config(config_path: str, http_host: str | None = None, http_port: int | None = None) -> list[DeployedApp]:
    """Deploy every application of a Serve config file from this driver (its code ships
    with the driver's runtime env); return where each answers."""
    import yaml
    from ray import serve
    from ray._common.utils import import_attr
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary
    from ray.serve.schema import ServeDeploySchema

    with open(config_path) as f:
        config = ServeDeploySchema.model_validate(yaml.safe_load(f))
    http = config.http_options
    host = http_host or http.host or "127.0.0.1"
    port = http_port or http.port or 8000
    serve.start(http_options={"host": host, "port": port})
    deployed = []
    for app in config.applications:
        builder = import_attr(app.import_path)
        built = call_user_app_builder_with_args_if_necessary(builder, app.args or {})
        serve.run(built, name=app.name, route_prefix=app.route_prefix, blocking=False)
        deployed.append(DeployedApp(app.name, app.route_prefix, f"http://{host}:{port}"))
    return deployed


# --------------------------------------------------------------------------- models by reference


def endpoint_spec(text: str) -> ModelEndpointSpec:
    """A model reference (raymaas.model_refs) -> the endpoint spec that publishes it: NAME and
    NAME@ALIAS follow the alias, NAME/VERSION serves that version until redeployed (as
    `mlflow models serve -m models:/NAME/VERSION` does). A logged model is refused: an
    endpoint answers at /models/NAME and follows the registry (ModelRefError, a ValueError)."""
    ref = ModelRef.parse(text).registered("`raymaas serve`")
    return ModelEndpointSpec(name=ref.name, alias=ref.alias, version=ref.version)


def serve_targets(args: Sequence[str]) -> tuple[str | None, list[ModelEndpointSpec]]:
    """`raymaas serve`'s arguments -> (a Serve config file, None) or (None, the models):
    nothing is the default config file; an existing file is a config file; anything else is a
    model reference. A config file and models together, or two config files, are refused
    (ValueError); a missing file with a config file's suffix is FileNotFoundError."""
    if not args:
        return DEFAULT_CONFIG, []
    files = [a for a in args if Path(a).is_file()]
    refs = [a for a in args if not Path(a).is_file()]
    if files and refs:
        raise ValueError(
            f"give a Serve config file or model references, not both: {files[0]} is a file, "
            f"{', '.join(map(repr, refs))} {'is not' if len(refs) == 1 else 'are not'}"
        )
    if len(files) > 1:
        raise ValueError(f"give one Serve config file, not {len(files)}: {', '.join(files)}")
    if files:
        return files[0], []
    for ref in refs:
        if ref.endswith(CONFIG_SUFFIXES):
            raise FileNotFoundError(f"Serve config {ref} does not exist")
    models = [endpoint_spec(r) for r in refs]
    names = [m.name for m in models]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"each model is published once, at /models/NAME: {', '.join(twice)} given twice")
    if INDEX_APP in names:
        raise ValueError(f"a model named {INDEX_APP!r} would take the index application's name")
    return None, models


def check_models(models: Sequence[ModelEndpointSpec], tracking_uri: str) -> list[str]:
    """The version each model reference stands for now; LookupError, saying which reference
    the registry at tracking_uri lacks, before anything starts."""
    from raymaas.tracking import get_client
    from raymaas.tracking.registry import find_version

    client = get_client(tracking_uri)
    return [str(find_version(client, spec.ref).version) for spec in models]


def deploy_models(
    models: Sequence[ModelEndpointSpec],
    http_host: str | None = None,
    http_port: int | None = None,
    tracking_uri: str | None = None,
) -> list[DeployedApp]:
    """Publish each model as its own application at /models/NAME with the default settings
    (ServeSpec's), plus the index application at "/"; return where each answers."""
    from ray import serve

    from raymaas.serving.endpoint import build_model_app
    from raymaas.serving.index import build_index_app
    from raymaas.serving.specs import IndexSpec, ServeSpec

    host, port = http_host or "127.0.0.1", http_port or 8000
    base = f"http://{host}:{port}"
    serve.start(http_options={"host": host, "port": port})
    targets = [serve.RunTarget(build_index_app(IndexSpec()), name=INDEX_APP, route_prefix="/")]
    deployed = [DeployedApp(INDEX_APP, "/", base)]
    for model in models:
        spec = ServeSpec(models=[model], tracking_uri=tracking_uri)
        targets.append(serve.RunTarget(build_model_app(spec), name=model.name, route_prefix=spec.route_prefix))
        deployed.append(DeployedApp(model.name, spec.route_prefix, base))
    serve.run_many(targets)  # together: the replicas start in parallel
    return deployed
