"""Objectives, one file per task; each implements the Task interface of ``dyt.tasks.base``."""
