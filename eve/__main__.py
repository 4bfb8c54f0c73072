import sys

from eve.cli import main

sys.exit(main())
