"""Keeping backups alive: check (leases, repair, health) and retention."""
