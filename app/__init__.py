"""moe-tui, the manager: workspace, store, ingest, queue daemon, backends, TUI, CLI.

Never imports torch at module level (``app.cli`` must start fast over SSH);
from the engine it uses only the torch-free ``engine.core`` (the run-directory contract and the job configs).
"""
