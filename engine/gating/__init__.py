"""MAP routing over frozen experts: data, features, router, losses, evaluation.

``config`` is torch-free (the manager imports it through ``engine.config``);
every other module here is engine-only.
"""
