import sys

from cgwatch.cli import main

sys.exit(main())
