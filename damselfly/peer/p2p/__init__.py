"""What other peers and the scheduler see: the upload server, announcing, seeding."""
