"""``python -m a2net ...``: the command line of :mod:`a2net.cli`."""

import sys

from a2net.cli import main

if __name__ == "__main__":
    sys.exit(main())
