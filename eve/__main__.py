import sys

from eve.cli.main import main

sys.exit(main())
