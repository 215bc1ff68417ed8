import sys

from assay.server.cli import main

sys.exit(main())
