"""`python -m vq_tokenizer`: the `vq-tokenizer` command."""

import sys

from .cli import main

sys.exit(main())
