"""`python -m features.demo`: seed the app database (make seed)."""

import sys

from features.demo import main

sys.exit(main())
