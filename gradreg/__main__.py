import sys

from gradreg.cli import main

sys.exit(main())
