"""Switchboard's central router: its sans-I/O core, wire formats and process."""

from router.core import *  # noqa: F403
from router.core import __all__ as _core_all

__all__ = list(_core_all)
