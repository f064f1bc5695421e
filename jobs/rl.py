"""Train an RLlib policy: `python -m jobs.rl SPEC [--set key=value ...]`.

Exit codes: 0 done, 1 training failed, 2 invalid spec, 3 the cluster lacks the resources,
130/143 stopped (Ctrl-C / `ray job stop`).
"""

import sys

from raymaas.runtime.entrypoint import main

if __name__ == "__main__":
    sys.exit(main(kind="rl"))
