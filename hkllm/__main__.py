import sys

from hkllm.cli import main

sys.exit(main())
