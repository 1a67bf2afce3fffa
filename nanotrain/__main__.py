import sys

from nanotrain.cli import main

sys.exit(main())
