import sys

from learner.bench import main

sys.exit(main())
