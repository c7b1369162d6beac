"""Keep glibc's malloc from growing the heap with every thread that ever ran (bounded RSS).

glibc gives each thread that allocates its own arena, up to 8 per core. This process has ~20
threads (ONNX Runtime lanes, decoders, anyio workers that come and go), and every arena keeps
the pages of the image buffers it once held. Measured with the int8 model at 16 concurrent
requests over ~11,000 requests: default arenas 442 -> 486 MiB and still growing; two arenas
357 -> 369 MiB. The cap is what MALLOC_ARENA_MAX=2 does, applied at start-up so that
`uvicorn cross_pictures.main:app` gets it too.
"""

from __future__ import annotations

import ctypes
import os
from typing import Final

ARENAS: Final = 2
_M_ARENA_MAX: Final = -8  # from glibc's malloc.h


def limit_malloc_arenas(arenas: int = ARENAS) -> bool:
    """Cap glibc's malloc arenas unless MALLOC_ARENA_MAX says otherwise; False off glibc."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return False  # the operator chose; glibc has read it already
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False  # musl, macOS: no such knob
    return bool(mallopt(_M_ARENA_MAX, arenas))
