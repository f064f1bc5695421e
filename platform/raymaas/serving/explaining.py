"""POST /models/NAME/explain: the attributions of each row's answer, beside every endpoint.

Two parts, as KServe and Seldon put an explainer beside the predictor:

- `Explanations`, an extension of the model endpoint (raymaas.serving.endpoint): it reads and
  checks the body exactly as /invocations does (same formats, same 4xx), takes the
  explanation's own param `target` (a class label, or a regression output's index: params.target
  of a JSON body, or `?target=` in the URL, the only way for an image body) and, for a model of
  images, `image` (params.image or `?image=true`: the attribution map as a PNG too), and hands
  the parsed rows with the model version that would answer them to the explainer.
- `Explainer`, a deployment of the application's own: it loads that version, explains with
  raymaas.explain.attribution (Integrated Gradients for the platform's torch models, Kernel
  SHAP over background data for any other) and computes the requests of one version a batch
  at a time (raymaas.serving.Batcher). It has its own replicas (none while nobody asks: the
  first request starts one), its own budget of requests (explain.max_ongoing_requests, then
  explain.max_queued_requests waiting; beyond, 503 at once) and its own bounds on the work
  per request (max_rows, n_steps, nsamples): predictions never wait behind an explanation,
  and an explanation never takes a prediction replica's CPU. Its own Ray CPUs (num_cpus) are a
  reservation, not a limit: on a machine shared with the prediction replicas, the proxy and the
  clients (2 cores), a busy explainer still slowed /invocations 1.6-3x (docs/performance.md). So
  its process yields the CPU: every thread at `explain.niceness` (19 by default, the lowest
  priority), its intra-op thread pools (torch, BLAS, OpenMP) at `explain.torch_threads`, at most
  what num_cpus reserves (lower_priority, limit_threads).

The answer: {"model", "version", "method", "baseline", "baseline_prediction" (IG),
"explanations": [{"prediction", "target", "score", "baseline_score", "attributions" (by
column for column models, the input's shape for tensors), "convergence_delta" (IG),
"attribution_png" (asked with image: a base64 PNG of the map, raymaas.explain.maps)}]}.
"""

from __future__ import annotations

import json
import logging
import os
from collections import OrderedDict
from types import SimpleNamespace
from typing import Any

import numpy as np

from raymaas.modelcode.images import image_shape
from raymaas.serving.errors import InvalidInput, ModelFailure, ServingError, TooLarge, Unavailable, error_of_status
from raymaas.serving.extension import EndpointExtension
from raymaas.serving.index import IMAGES_ONLY, SCORING_SCHEMA, error_doc
from raymaas.serving.specs import ExplainSpec

logger = logging.getLogger("ray.serve")

EXPLAINER_DEPLOYMENT = "Explainer"
EXPLAIN = "explain"
TARGET_PARAM = "target"
IMAGE_PARAM = "image"
FLAGS = {"true": True, "1": True, "false": False, "0": False}  # what params.image / ?image= may be
MAX_CACHED_EXPLAINERS = 4  # model versions an explainer replica keeps loaded (LRU)
# what the BLAS and OpenMP libraries read when loaded (OpenBLAS reads its own name first, then OMP_)
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


_EXPLANATION = {
    "type": "object",
    "properties": {
        "prediction": {},
        "target": {},
        "score": {"type": "number"},
        "baseline_score": {"type": "number"},
        "attributions": {"description": "by column for column models, the input's shape for tensors"},
        "convergence_delta": {"type": "number", "description": "Integrated Gradients only"},
        "attribution_png": {
            "type": "string",
            "format": "byte",
            "description": "asked with image: a base64 PNG of the attributions summed over channels, "
            "red toward the target, blue away, white neither (a model of images only)",
            IMAGES_ONLY: True,
        },
    },
}

# /openapi.json's description of the route (raymaas.serving.index)
ROUTE_DOCS = {
    ("POST", EXPLAIN): {
        "summary": "explain the answers: one attribution per input feature of each row",
        "description": "the bodies /invocations takes, at most explain.max_rows rows; params.target (or "
        "?target= in the URL, for any body: the only way for images): the class label or the regression "
        "output (index) to explain (default: the predicted class, output 0); params.image (or ?image=true): "
        "each explanation of a model of images also carries attribution_png, the map as a base64 PNG",
        "parameters": [
            {
                "name": TARGET_PARAM,
                "in": "query",
                "required": False,
                "schema": {"type": "string"},
                "description": "the class label or regression output (index) to explain, instead of params.target",
            },
            {
                "name": IMAGE_PARAM,
                "in": "query",
                "required": False,
                "schema": {"type": "string", "enum": ["true", "false", "1", "0"]},
                "description": "a model of images: also answer each attribution map as a PNG, instead of params.image",
                IMAGES_ONLY: True,
            },
        ],
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        SCORING_SCHEMA: {
                            "params": {
                                TARGET_PARAM: {
                                    "type": ["string", "number", "boolean", "null"],
                                    "description": "a class label, or a regression output's index",
                                },
                                IMAGE_PARAM: {
                                    "type": ["boolean", "integer", "string"],
                                    "description": "a model of images: true for each map as a PNG too",
                                    IMAGES_ONLY: True,
                                },
                            }
                        }
                    }
                },
                "text/csv": {"schema": {"type": "string", "description": "a header row, then one row per input"}},
                "image/png": {
                    "schema": {"type": "string", "format": "binary", "description": "a model of images"},
                    IMAGES_ONLY: True,
                },
                "image/jpeg": {
                    "schema": {"type": "string", "format": "binary", "description": "a model of images"},
                    IMAGES_ONLY: True,
                },
                "multipart/form-data": {
                    "schema": {"type": "object", "description": "image files, one a part, explained in order"},
                    IMAGES_ONLY: True,
                },
            },
        },
        "responses": {
            "200": {
                "description": "the attributions of each row's answer, by the version that answers predictions now",
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "required": ["model", "version", "method", "explanations"],
                            "properties": {
                                "model": {"type": "string"},
                                "version": {"type": "string"},
                                "method": {"type": "string"},
                                "baseline": {},
                                "baseline_prediction": {},
                                "explanations": {"type": "array", "items": _EXPLANATION},
                            },
                        }
                    }
                },
            },
            "400": error_doc("malformed JSON, CSV or multipart body"),
            "413": error_doc("more rows than explain.max_rows, a body too large, or an image of too many pixels"),
            "415": error_doc("neither application/json nor text/csv (nor images, for a model of images)"),
            "422": error_doc(
                "input does not match the signature, an image that does not decode, a target the model lacks "
                "or given twice, image given twice, not true/false or for a model not of images, or no "
                "background data"
            ),
            "500": error_doc("the explainer failed"),
            "503": error_doc("the explainer is at capacity; retry (Retry-After)"),
        },
    }
}


class Explanations(EndpointExtension):
    """POST /models/NAME/explain on every replica of a model endpoint."""

    route_docs = ROUTE_DOCS

    def __init__(self, endpoint, settings: dict, explainer):
        super().__init__(endpoint, settings, explainer)
        self.spec = ExplainSpec.model_validate(settings)
        self.explainer = explainer  # the application's Explainer deployment

    def routes(self):
        return {("POST", EXPLAIN): self.explain}

    async def explain(self, request, name: str):
        from ray.serve.exceptions import BackPressureError
        from starlette.responses import JSONResponse

        body = await self.endpoint.plane.read(request)
        loaded = (await self.endpoint.get_model(name)).current
        request.state.loaded = loaded  # its errors name the version, as /invocations' do
        payload = body.json() if body.is_json else None
        target = split_target(payload, request.query_params.get(TARGET_PARAM))
        image = split_image(payload, request.query_params.get(IMAGE_PARAM), loaded.signature)
        # a JSON body: the payload just read, less explain's params; strings as MLflow parses them (the
        # explainer's model is a pyfunc of its own)
        data, _ = body.decode(loaded, objects=False)
        rows = _rows(data)
        if rows > self.spec.max_rows:
            raise TooLarge(f"explain takes at most {self.spec.max_rows} rows a request (explain.max_rows); got {rows}")
        try:
            answer = await self.explainer.explain.remote(name, loaded.version, data, target, image)
        except BackPressureError:
            raise Unavailable(
                "the explainer is at capacity (explain.max_ongoing_requests and max_queued_requests); retry later"
            ) from None
        if "error" in answer:  # an error crossed the handle as a value: its type again
            raise error_of_status(answer["status"], answer["error"])
        return JSONResponse({"model": name, "version": loaded.version, **answer}, headers=loaded.headers())


def split_target(payload, query: str | None = None) -> Any:
    """The target, taken out of a JSON body's params (payload, parsed; None for a body of
    another type) or `?target=` of the URL (the only way for an image body, which has no
    params): explain's own param, not the model's; the rest is checked as /invocations
    checks it. Given twice is a 422."""
    target, found = _take_param(payload, TARGET_PARAM)
    if found and target is not None and not isinstance(target, (str, int, float, bool)):
        raise InvalidInput(f"params.target must be a class label or an output index, got {json.dumps(target)}")
    if query is None:
        return target
    if found:
        raise InvalidInput("target is given twice, in params.target and in the URL (?target=): give it once")
    return query


def split_image(payload, query: str | None, signature) -> bool:
    """Whether to answer each attribution map as a PNG too: like target, explain's own param,
    taken out of params.image of payload, or `?image=` (true/false/1/0), given once; asking
    it of a model that is not of images is a 422."""
    value, found = _take_param(payload, IMAGE_PARAM)
    if query is not None:
        if found:
            raise InvalidInput("image is given twice, in params.image and in the URL (?image=): give it once")
        value, found = query, True
    if not found:
        return False
    where = "?image=" if query is not None else "params.image"
    text = value if isinstance(value, str) else json.dumps(value)  # 1.0 stays "1.0": not a flag
    if text.strip().lower() not in FLAGS:
        raise InvalidInput(f"{where} must be true or false (or 1, 0), got {text}")
    image = FLAGS[text.strip().lower()]
    if image and image_shape(signature) is None:
        raise InvalidInput(
            f"{where}: an attribution map is drawn for a model of images only (a float32 tensor "
            "[-1, C, H, W] with C 1 or 3); this model's input is not one",
        )
    return image


def _take_param(payload, name: str) -> tuple[Any, bool]:
    """(params[name] of a parsed JSON body, whether it had one), taken out of payload (and its
    params with it once empty), so the rest decodes as the model's input."""
    params = payload.get("params") if isinstance(payload, dict) else None
    if not isinstance(params, dict) or name not in params:
        return None, False
    value = params.pop(name)
    if not params:
        del payload["params"]
    return value, True


def _rows(data) -> int:
    try:
        return len(data)
    except TypeError:
        return 1


def background_of(path: str):
    """The rows (a DataFrame) or the profile (a dict) a background file holds."""
    from pathlib import Path

    import pandas as pd

    from raymaas.monitoring.profile import load_profile

    suffix = Path(path).suffix
    if suffix == ".parquet":
        return pd.read_parquet(path)
    if suffix == ".csv":
        return pd.read_csv(path)
    if suffix == ".json":
        return load_profile(path)
    raise ValueError(f"background file {path}: give rows (.parquet, .csv) or a profile (.json)")


def make_explainer(model, profile: dict | None, background_file: str | None, background_rows: int):
    """The raymaas.explain explainer of a loaded pyfunc model: its own torch attributions, or
    Kernel SHAP over the background file's rows, else over the profile's bins."""
    from raymaas.explain.attribution import ExplainError, explainer_for

    background, source = None, ""
    if background_file:
        try:
            found = background_of(background_file)
        except (OSError, ValueError) as err:
            raise ExplainError(f"the background file could not be read: {err}") from None
        if isinstance(found, dict):
            profile = found
        else:
            background, source = found, f"rows of {background_file}"
    return explainer_for(model, profile, background, source, background_rows)


def lower_priority(niceness: int) -> int:
    """Every thread of this process at `niceness` at least (never raised back: an unprivileged
    process may not); threads started later inherit it. Answers the threads changed."""
    # Linux keeps a nice value per thread, not per process (setpriority(2), BUGS): setting the
    # process's would change the calling thread only, and a Serve replica's work runs on threads
    # started before its constructor (the user-code event loop, Ray's core threads, OpenBLAS's pool)
    # or by them (asyncio.to_thread's executor). So each thread is set, from /proc/self/task; a
    # thread started meanwhile by one not yet set is caught by the next pass.
    changed = 0
    for _ in range(5):
        try:
            tids = [int(tid) for tid in os.listdir("/proc/self/task")]
        except OSError:  # not Linux: there the nice value is the process's
            tids = [0]
        passed = 0
        for tid in tids:
            try:
                if os.getpriority(os.PRIO_PROCESS, tid) < niceness:
                    os.setpriority(os.PRIO_PROCESS, tid, niceness)
                    passed += 1
            except ProcessLookupError:  # the thread ended meanwhile
                pass
        changed += passed
        if not passed:
            break
    return changed


def limit_threads(threads: int) -> None:
    """This process's intra-op thread pools at `threads`: torch's, those of the BLAS and OpenMP
    libraries loaded already, and (by THREAD_VARS) those loaded later."""
    import torch  # here, as the constructor had it: the endpoint replicas import this module too

    # scikit-learn's OpenMP and SciPy's OpenBLAS load with the model (after this), and read these then.
    # Ray sets OMP_NUM_THREADS for a worker only where it was unset; set here, it is what is reserved.
    os.environ.update({var: str(threads) for var in THREAD_VARS})
    torch.set_num_threads(threads)  # each thread torch computes on takes this value on its first op
    try:
        from threadpoolctl import threadpool_limits  # comes with scikit-learn; not a dependency of raymaas
    except ImportError:
        return
    threadpool_limits(limits=threads)  # numpy's OpenBLAS, loaded at import, read the variables before


def _explainer_class():
    from ray import serve

    from raymaas.serving.batching import Batcher
    from raymaas.serving.specs import ServeSpec

    class Explainer:
        """Explains the application's models, a batch of one version's requests at a time."""

        def __init__(self, spec: dict):
            from raymaas import paths

            self.spec = ServeSpec.model_validate(spec)
            self.config = self.spec.explain
            # A Serve replica is an actor with a worker process of its own (never shared, ended with
            # the replica): lowering this process's priority touches no other replica nor the raylet.
            lower_priority(self.config.niceness)
            limit_threads(self.config.torch_threads)
            self.by_name = {m.name: m for m in self.spec.models}
            self.tracking_uri = self.spec.tracking_uri or paths.tracking_uri()
            self.explainers: OrderedDict[tuple[str, str], Any] = OrderedDict()
            self.batcher = Batcher(self._explain_batch, self.config.max_batch_size, self.config.batch_wait_timeout_s)

        async def explain(self, name: str, version: str, data, target, image: bool = False) -> dict:
            """The explanation, or {"error", "status"}: an error crosses the handle as a value
            (a raised one would arrive wrapped in Ray's RayTaskError), made a type again by the caller."""
            try:
                return await self.batcher.submit((name, version, data, target, image))
            except ServingError as err:
                return {"error": err.message, "status": err.status}

        # ------------------------------------------------------------ in the batch thread

        def _explainer(self, name: str, version: str):
            import mlflow

            from raymaas.monitoring.window import profile_of

            key = (name, version)
            if key in self.explainers:
                self.explainers.move_to_end(key)
                return self.explainers[key]
            mlflow.set_tracking_uri(self.tracking_uri)
            mlflow.set_registry_uri(self.tracking_uri)
            model = mlflow.pyfunc.load_model(f"models:/{name}/{version}")
            spec = self.by_name[name]

            profile, _ = profile_of(SimpleNamespace(model=model, name=name, version=version), spec.reference)
            explainer = make_explainer(model, profile, spec.background, self.config.background_rows)
            self.explainers[key] = explainer
            while len(self.explainers) > MAX_CACHED_EXPLAINERS:
                self.explainers.popitem(last=False)
            return explainer

        def _explain_batch(self, items: list) -> list:
            # matplotlib only where maps are drawn: the endpoint replicas import this module too
            from raymaas.explain.maps import attribution_png
            from raymaas.serving.batching import _concat

            results: list = [None] * len(items)
            groups: dict[tuple, list[int]] = {}
            for i, (name, version, _, target, _) in enumerate(items):
                groups.setdefault((name, version, json.dumps(target)), []).append(i)
            for (name, version, _), idx in groups.items():
                datas = [items[i][2] for i in idx]
                merged = _concat(datas) if len(idx) > 1 else datas[0]
                if merged is None:  # inputs that do not concatenate: one by one
                    for i in idx:
                        results[i] = self._explain_one(name, version, [items[i][2]], items[i][3])[0]
                    continue
                for i, answer in zip(idx, self._explain_one(name, version, datas, items[idx[0]][3], merged)):
                    results[i] = answer
            for item, answer in zip(items, results):
                if item[4] and isinstance(answer, dict):  # each request's rows are its own dicts
                    for row in answer["explanations"]:
                        row["attribution_png"] = attribution_png(np.asarray(row["attributions"]))
            return results

        def _explain_one(self, name: str, version: str, datas: list, target, merged=None) -> list[dict]:
            """The answers of requests datas (of one version and target), computed together."""
            from raymaas.explain.attribution import KERNEL_SHAP, ExplainError

            try:
                explainer = self._explainer(name, version)
                work = {"nsamples": self.config.nsamples} if explainer.method == KERNEL_SHAP else {}
                if not work:
                    work = {"n_steps": self.config.n_steps}
                explanation = explainer.explain(datas[0] if merged is None else merged, target, **work)
            except ExplainError as err:
                return [InvalidInput(str(err))] * len(datas)
            except Exception as err:
                logger.exception("explaining %s version %s failed", name, version)
                return [ModelFailure(f"the explanation failed: {err}")] * len(datas)
            whole = explanation.to_json()
            answers, start = [], 0
            for data in datas:
                n = _rows(data)
                answers.append({**whole, "explanations": whole["explanations"][start : start + n]})
                start += n
            return answers

        def __del__(self):
            if hasattr(self, "batcher"):
                self.batcher.stop()

    Explainer.__name__ = Explainer.__qualname__ = EXPLAINER_DEPLOYMENT
    return serve.deployment(Explainer, name=EXPLAINER_DEPLOYMENT)


def build_explainer(spec):
    """The Explainer deployment of an application, bound to its spec: from no replica at rest
    to explain.max_replicas under load, its own request budget."""
    config = spec.explain
    options: dict[str, Any] = {"num_cpus": config.num_cpus}
    if "runtime_env" in spec.ray_actor_options:
        options["runtime_env"] = spec.ray_actor_options["runtime_env"]
    return (
        _explainer_class()
        .options(
            autoscaling_config={
                "min_replicas": config.min_replicas,
                "initial_replicas": config.min_replicas,
                "max_replicas": max(config.max_replicas, config.min_replicas),
                "target_ongoing_requests": max(1, config.max_ongoing_requests // 2),
                "upscale_delay_s": 1,
                "downscale_delay_s": 600,
            },
            max_ongoing_requests=config.max_ongoing_requests,
            max_queued_requests=config.max_queued_requests,
            ray_actor_options=options,
            health_check_timeout_s=60,
            graceful_shutdown_timeout_s=10,
        )
        .bind(spec.model_dump())
    )
