"""`python -m raymaas.cli ...`, the same as `raymaas ...`."""

import sys

from raymaas.cli.main import main

sys.exit(main())
