"""Making a backup: phase one walks a source into the queue, phase two plans each entry and uploads what is new."""
