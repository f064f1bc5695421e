"""The held-out digits as a file to score, and the accuracy of a scored copy of it.

What `make demo`'s batch stage and jobs/specs/predict_digits.yaml score: the validation split
of a digits training spec (the rows its model never trained on), with an `id` and the true
`label` beside the 64 pixel columns, so that both pass through and the output says how many
predictions are right.

    .venv/bin/python -m raymaas.batch.sample [TRAINING_SPEC] [CSV]
    (default: jobs/specs/digits_mlp.yaml, .raymaas/data/digits-holdout.csv)
"""

from __future__ import annotations

import sys
from pathlib import Path

DEFAULT_CSV = ".raymaas/data/digits-holdout.csv"
PASSTHROUGH = ("id", "label")


def write_holdout(training_spec, path: str | Path) -> Path:
    """The validation split of a built-in data set's training spec (a SupervisedSpec) as CSV."""
    import numpy as np
    import pandas as pd

    from raymaas.supervised.data import load_builtin

    split = load_builtin(training_spec.data, training_spec.train_loop_config.seed)
    frame = pd.DataFrame(split.x_val, columns=[f"pixel_{i}" for i in range(split.x_val.shape[1])])
    frame.insert(0, "label", split.y_val.astype(np.int64))
    frame.insert(0, "id", np.arange(len(frame), dtype=np.int64))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)
    return path


def holdout_accuracy(output: str | Path, prediction_column: str = "prediction") -> tuple[float, int]:
    """(share of rows whose prediction is their label, rows) of a scored copy of the holdout."""
    import pandas as pd

    scored = pd.read_parquet(output)
    return float((scored[prediction_column] == scored["label"]).mean()), len(scored)


def main(argv: list[str]) -> int:
    from raymaas.specs import load_spec
    from raymaas.supervised.job import SupervisedSpec

    spec_path = argv[0] if argv else "jobs/specs/digits_mlp.yaml"
    target = argv[1] if len(argv) > 1 else DEFAULT_CSV
    written = write_holdout(load_spec(SupervisedSpec, spec_path), target)
    print(f"raymaas: the held-out digits of {spec_path} in {written}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
