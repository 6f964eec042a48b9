"""One module per caching method; importing this package registers every family."""
from . import dbcache, delta_dit, smoothcache, taylorseer, teacache, toca  # noqa: F401
