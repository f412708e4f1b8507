"""Object and pointer ids (rule 1: whoever creates an object picks its id).

63 random bits: several clients choose ids on one worker independently, and at
that width a collision is never expected (the store still refuses one).
"""

from __future__ import annotations

import os
import random

_random = random.Random(os.urandom(16))
os.register_at_fork(after_in_child=lambda: _random.seed(os.urandom(16)))


def new_id() -> int:
    return _random.getrandbits(63)
