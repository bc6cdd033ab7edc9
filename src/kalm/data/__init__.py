"""Data: goal suites, the episode file format, and collection with scripted experts."""
