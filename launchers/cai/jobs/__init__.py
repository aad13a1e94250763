"""Scripts that CML runs as jobs (paths in jobs_config.yaml are relative to the project root)."""
