"""Limits shared by the run settings and the request a site checks (defined here once).

Beyond them a value is not a meaningful setting: the run config is refused, and a site refuses a
request that carries one (common/protocol/request.py).
"""

MAX_NOISE_MULTIPLIER = 1e4  # sigma
MAX_CLIP_NORM = 1e6  # C
MAX_TARGET_EPSILON = 1e3
MAX_ROUNDS = 100_000
MAX_LOCAL_EPOCHS = 1_000
MAX_LOCAL_STEPS = 1_000_000
MAX_BATCH_SIZE = 10_000_000
MAX_LEARNING_RATE = 1e3
MAX_RUN_KEY = 200  # characters
