"""Command-line tools; each module is one `python -m dysl_ros <command>`."""
