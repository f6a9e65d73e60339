import sys

from mtsc.cli import main

sys.exit(main())
