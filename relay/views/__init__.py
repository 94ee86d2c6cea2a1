"""One blueprint per route group."""
