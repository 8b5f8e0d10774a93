"""Structured pruning: coupled-channel groups, importance criteria, physical removal, schedules."""
