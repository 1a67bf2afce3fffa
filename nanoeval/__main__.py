import sys

from nanoeval.cli import main

sys.exit(main())
