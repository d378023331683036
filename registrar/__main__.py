import sys

from registrar.cli import main

sys.exit(main())
