"""Where runs execute. ``local``: detached subprocesses on this machine."""
