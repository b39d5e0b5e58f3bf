"""Campaigns and their people and data: creating and configuring a campaign (`setup`), members and roles
(`members`), building tasks from responses (`task_building`), and imports of prompts, responses and
preferences (`imports/`)."""
