import sys

from bench.vllm_compare.run import main

sys.exit(main())
