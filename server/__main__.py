import sys

from .wiring.cli import main

sys.exit(main())
