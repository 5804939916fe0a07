"""m-height of analog error-correcting codes: exact solver, data generator, models.

Kept import-free so that ``engine.mheight.config`` (imported by the manager)
loads neither numpy nor torch.
"""
