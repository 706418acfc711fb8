import sys

from bench.vllm.run import main

sys.exit(main())
