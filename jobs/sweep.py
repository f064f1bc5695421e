"""A hyperparameter sweep on Ray Tune: `python -m jobs.sweep SPEC [--set key=value ...]`.

SPEC is a job spec (supervised) with tune_config and param_space. One MLflow parent run, one
child run per trial, the best trial's model registered and gated. A sweep stopped and run
again with the same mlflow.run_name continues: finished trials are kept, the rest resumed.

Exit codes: 0 done, 1 the sweep failed, 2 invalid spec or space, 3 the cluster lacks the
resources, 130/143 stopped (Ctrl-C / `ray job stop`).
"""

import sys

from raymaas.runtime.entrypoint import main

if __name__ == "__main__":
    sys.exit(main(sweep=True))
