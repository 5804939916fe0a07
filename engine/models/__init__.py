"""Network definitions, built by name from a job config."""
