"""Learning to reject on the long tail: the plug-in stage after the gate (fit-reject)."""
