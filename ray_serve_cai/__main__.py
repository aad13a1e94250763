import sys

from ray_serve_cai.cli import main

sys.exit(main())
