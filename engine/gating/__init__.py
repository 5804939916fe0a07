"""MAP routing over frozen experts: data, features, router, losses, evaluation.

``config`` is torch-free (the manager loads it through ``engine.core.config.JOBS``);
every other module here is engine-only.
"""
