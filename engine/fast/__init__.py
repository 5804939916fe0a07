"""Optional CPU kernels in C (the m-height minor features and fast models' forward pass), built on first use.

Nothing here is imported by this package's ``__init__``: the job configs import
``engine.fast.switch`` (stdlib only), and must stay torch- and numpy-free.
"""
