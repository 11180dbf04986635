"""Entry point for ``accelerate launch`` in the multi-process test: registers the test method, runs the CLI."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _train_helpers import register_toy  # noqa: E402
from dwakd.cli.main import main  # noqa: E402

register_toy()
sys.exit(main(sys.argv[1:]))
