"""Explanations served: POST /models/NAME/explain against the same explainer called in process.

    .venv/bin/python bench/explain_load.py [--quick]

Registers two models in a throw-away MLflow store: an MLP trained on the digits (64 pixels, a
tensor signature, logged as the platform logs it: reference profile and training-mean
baseline), explained with Integrated Gradients (50 steps); and a scikit-learn logistic
regression on the same pixels registered by hand (64 named columns), explained with Kernel SHAP
(200 samples a row, 32 background rows drawn from the profile of a reference file named in the
serve config). Publishes each with raymaas's Serve app (HAProxy ingress, one prediction
replica, the Explainer deployment beside it) and measures, one row a request:

- explain p50 at concurrency 1 and explanations/s at concurrency 8, against the peer: the same
  explainer (raymaas.explain.attribution) called in this process, p50 of one row and rows/s in
  one thread;
- what explanations cost predictions: /invocations p50 at concurrency 1 alone, and while /explain
  is driven at concurrency 8 (the issue: explanations never slow predictions).

Prints the figures and the ratios; exits 0 (no target is set beyond "never slow predictions",
which the last ratio shows).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_load import COLUMN, closed_loop, digits_frame, register_column_model, start_serve  # noqa: E402

MLP = "bench-explain-mlp"


def register_mlp(client) -> np.ndarray:
    import mlflow
    import torch

    from raymaas.modelcode.pyfunc import log_classifier
    from raymaas.monitoring.profile import build_profile

    frame, target = digits_frame()
    x = frame.to_numpy(dtype=np.float32)
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
    opt = torch.optim.Adam(module.parameters(), lr=0.01)
    xt, yt = torch.from_numpy(x), torch.from_numpy(target)
    for _ in range(300):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(module(xt), yt).backward()
        opt.step()
    with mlflow.start_run(run_name=MLP):
        info = log_classifier(module, x[:8], profile=build_profile(x), baseline=x.mean(axis=0))
    version = mlflow.register_model(info.model_uri, MLP).version
    client.set_registered_model_alias(MLP, "champion", version)
    return x


def body(name: str) -> bytes:
    frame, _ = digits_frame()
    if name == COLUMN:
        return json.dumps(
            {"dataframe_split": json.loads(frame.iloc[[7]].to_json(orient="split", index=False))}
        ).encode()
    return json.dumps({"inputs": frame.iloc[[7]].to_numpy().tolist()}).encode()


def in_process(name: str, reference: Path, n: int) -> dict:
    """The peer: the same explainer the Explainer replica builds, called here on one row."""
    import mlflow

    from raymaas.monitoring.window import profile_of
    from raymaas.serving.explaining import make_explainer
    from raymaas.serving.specs import ExplainSpec

    config = ExplainSpec()
    model = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    profile, _ = profile_of(SimpleNamespace(model=model, name=name, version="1"), str(reference))
    explainer = make_explainer(model, profile, None, config.background_rows)
    frame, _ = digits_frame()
    row = frame.iloc[[7]].reset_index(drop=True) if name == COLUMN else frame.iloc[[7]].to_numpy(dtype=np.float32)
    work = {"nsamples": config.nsamples} if explainer.method == "kernel_shap" else {"n_steps": config.n_steps}
    explainer.explain(row, **work)  # warm
    times = []
    for _ in range(n):
        start = time.perf_counter()
        explainer.explain(row, **work)
        times.append(time.perf_counter() - start)
    times = np.asarray(times) * 1000
    return {"p50": float(np.median(times)), "rps": 1000 / float(times.mean()), "method": explainer.method}


def run(quick: bool) -> dict:
    import ray
    from ray import serve

    from raymaas.serving import ServeSpec, build_model_app
    from raymaas.tracking import ensure_experiment, get_client

    scale = 0.3 if quick else 1.0
    home = Path(tempfile.mkdtemp(prefix="bench-explain-"))
    tracking_uri = f"sqlite:///{home / 'mlflow.db'}"
    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    client = get_client(tracking_uri)
    mlflow.set_experiment(experiment_id=ensure_experiment(client, "bench-explain"))
    register_mlp(client)
    register_column_model(client)
    reference = home / "reference.csv"
    digits_frame()[0].to_csv(reference, index=False)

    results: dict = {}
    for name in (MLP, COLUMN):
        results[f"{name}:in-process"] = in_process(name, reference, int(40 * scale) + 5)

    port, cleanup = start_serve(tracking_uri, "haproxy")
    try:
        for name in (MLP, COLUMN):
            spec = ServeSpec.model_validate(
                {
                    "models": [{"name": name, "reference": str(reference)}],
                    "autoscaling_config": {"min_replicas": 1, "max_replicas": 1},
                    "ray_actor_options": {"num_cpus": 0.5},
                    "explain": {"min_replicas": 1},  # measured warm: the first request does not start it
                }
            )
            serve.run(build_model_app(spec), name=name, route_prefix=spec.route_prefix)
            base = f"http://127.0.0.1:{port}/models/{name}"
            explain, invocations = f"{base}/explain", f"{base}/invocations"
            asyncio.run(closed_loop(explain, body(name), 2, 20, 30))  # warm-up
            c1 = asyncio.run(closed_loop(explain, body(name), 1, int(200 * scale), 20 * scale))
            c8 = asyncio.run(closed_loop(explain, body(name), 8, int(2000 * scale), 15 * scale))
            alone = asyncio.run(closed_loop(invocations, body(name), 1, int(400 * scale), 10 * scale))
            loaded = _under_load(invocations, explain, body(name), int(400 * scale), 10 * scale)
            results[name] = {
                "explain_c1": c1,
                "explain_c8": c8,
                "invocations_alone": alone,
                "invocations_loaded": loaded,
            }
            serve.delete(name)
    finally:
        serve.shutdown()
        ray.shutdown()
        cleanup()
    return results


def _under_load(invocations: str, explain: str, payload: bytes, n: int, seconds: float) -> dict:
    """Invocations at concurrency 1 while /explain runs at 8 in another thread."""
    stop = threading.Event()

    def flood():
        while not stop.is_set():
            asyncio.run(closed_loop(explain, payload, 8, 10_000, 2.0))

    thread = threading.Thread(target=flood, daemon=True)
    thread.start()
    time.sleep(1.0)
    try:
        return asyncio.run(closed_loop(invocations, payload, 1, n, seconds))
    finally:
        stop.set()
        thread.join(timeout=30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests (a smoke run, not figures)")
    args = parser.parse_args()
    results = run(args.quick)
    print(json.dumps(results, indent=1), flush=True)
    print("\nexplanations of one digit (one row a request)", flush=True)
    for name in (MLP, COLUMN):
        peer, served = results[f"{name}:in-process"], results[name]
        c1, c8 = served["explain_c1"], served["explain_c8"]
        alone, loaded = served["invocations_alone"], served["invocations_loaded"]
        print(
            f"{name:20s} {peer['method']:21s} explain p50 {c1['p50']:7.1f} ms served vs {peer['p50']:7.1f} ms in process "
            f"({c1['p50'] / peer['p50']:.2f}x); at 8: {c8['rps']:6.1f}/s vs {peer['rps']:6.1f}/s "
            f"({c8['rps'] / peer['rps']:.2f}x, {c8['errors']} refused)",
            flush=True,
        )
        print(
            f"{'':20s} invocations p50 {alone['p50']:.2f} ms alone, {loaded['p50']:.2f} ms with /explain at 8 "
            f"({loaded['p50'] / alone['p50']:.2f}x; {loaded['errors']} errors)",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
