"""Run a job of any kind, picked by the spec's `kind:`: `python -m jobs.run SPEC [--set key=value ...]`.

The entrypoint of job kinds that have no module of their own here (raymaas.kinds).
Exit codes: 0 done, 1 training failed, 2 invalid spec, 3 the cluster lacks the resources,
130/143 stopped (Ctrl-C / `ray job stop`).
"""

import sys

from raymaas.runtime.entrypoint import main

if __name__ == "__main__":
    sys.exit(main())
