"""Entrypoints that get submitted: `python -m jobs.supervised SPEC`.

In a `ray job submit` driver the job's files are unpacked into a temporary folder and the
library is not installed; it sits in platform/ beside this package, so put it on the path.
"""

import sys
from pathlib import Path

try:
    import raymaas  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "platform"))
