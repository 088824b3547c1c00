"""``python -m electric.vaxine.embedded --data-dir D --api-port P --replication-port Q``."""

from gevent import monkey

monkey.patch_all()

import sys  # noqa: E402

from electric.vaxine.embedded.server import main  # noqa: E402

sys.exit(main())
