"""``python -m switchkd ...`` (also ``accelerate launch -m switchkd train ...``)."""

import sys

from switchkd.cli.main import main

sys.exit(main())
