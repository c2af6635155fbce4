"""The engine: a backup run (walk, upload, record, publish), a watch round, a dry run and copies to
another grid, each taking the resources it works with as arguments; the commands open those
resources and report."""
