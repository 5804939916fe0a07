"""Torch-free engine code: the run-directory contract, its schema, the recorder, process
identity and the job-config registry. The only engine code the manager imports."""
