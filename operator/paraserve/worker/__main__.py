"""`python -m paraserve.worker`: the same as `paraserve worker`."""

import sys

from paraserve.worker import main

sys.exit(main())
