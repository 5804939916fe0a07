"""How a run's status is drawn, the same on every screen."""

STATUS_STYLE = {
    "queued": "dim",
    "pending": "cyan",  # submitted to Slurm, waiting in its queue (the Slot says why)
    "running": "bold cyan",
    "succeeded": "green",
    "failed": "bold red",
    "cancelled": "yellow",
    "lost": "magenta",
    "blocked": "bold dark_orange reverse",  # waits on a failed dependency: needs a person (retry the parent)
    "unreadable": "bold magenta reverse",  # a run file does not fit its schema: needs a person (the error says which)
}
