"""Preference data leaving the app: export options (`options`), rows in three shapes (`rows`), containers
(`formats`), entry points (`export`), snapshots and their background run, and the training data the run
kinds read (`training_data`)."""
