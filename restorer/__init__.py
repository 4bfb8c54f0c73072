"""The restorer: decodes batch frames and RESTOREs them into the target (and each
mirror target) under the run's conflict policy, reporting one Result per batch.

Run in a spawned process through ``restorer.worker.main``; ``run_restorer`` is
the same loop in-process (tests, ``eve`` subcommands).
"""

from restorer.options import RestorerOptions
from restorer.worker import main, run_restorer

__all__ = ["RestorerOptions", "main", "run_restorer"]
