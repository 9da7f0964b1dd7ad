"""trice_rl: train language models to reason step by step, and compare methods honestly.

Importing the package registers the reasoning environments with Gymnasium.
"""

import envs  # noqa: F401  (registers the environments)
