"""The custodian: keeps the leases of a repository's objects alive from their storage indexes alone, never
holding a cap that reads them."""
