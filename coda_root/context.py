"""`import coda.context` works too; the implementation lives in coda.client.context."""

from coda.client.context import *  # noqa: F401,F403
from coda.client.context import __all__  # noqa: F401
