"""``python -m cryoet_monai`` is the same as the ``cryoet-monai`` command."""

import sys

from cryoet_monai.cli import main

sys.exit(main())
