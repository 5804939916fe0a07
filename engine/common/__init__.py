"""What several jobs share: device, seeding, schedules, checkpoint I/O, metrics, calibration."""
