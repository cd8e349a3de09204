import sys

from features.demo import main

sys.exit(main())
