import sys

from medreason.cli import main

sys.exit(main())
