"""The queue: submissions (submit) and the daemon that launches and watches runs."""
