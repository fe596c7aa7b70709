"""The one wall-clock bound tests may use: long enough that only a hang reaches it.

Tests bound work by steps and progress, never by speed; a loaded 2-core machine can be ten times slower than an
idle one, so a limit near a run's normal duration fails healthy code.
"""

HANG_S = 3600
