import sys

from siamgrad.cli import main

sys.exit(main())
