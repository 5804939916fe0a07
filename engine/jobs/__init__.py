"""One module per engine job kind; each exposes ``run(spec, recorder)``."""
