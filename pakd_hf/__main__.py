"""`python -m pakd_hf ...` is the `pakd` command (what `torchrun` or `accelerate launch` can start)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
