"""Imports every built-in mixer module so that each registers itself. The order here is the order tables use."""

# isort: off
from . import gka  # noqa: F401
from . import gated_deltanet  # noqa: F401
from . import gla  # noqa: F401
from . import mamba2  # noqa: F401
from . import mesanet  # noqa: F401
from . import attention  # noqa: F401
