"""`python -m vq_tokenizer.cli`: the `vq-tokenizer` command."""

import sys

from . import main

sys.exit(main())
