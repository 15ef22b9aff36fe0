"""``python -m slimformer.cli ...``: how the service starts its embedded worker."""

import sys

from slimformer.cli import main

if __name__ == "__main__":
    sys.exit(main())
