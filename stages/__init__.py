"""Pipeline stages: each module has run(cfg) and talks to the others only through files on disk."""
