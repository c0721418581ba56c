import sys

from wasmxds.cli import main

sys.exit(main())
