"""Deploying a Serve config file (`raymaas serve`) from this driver."""

from __future__ import annotations

from dataclasses import dataclass


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
