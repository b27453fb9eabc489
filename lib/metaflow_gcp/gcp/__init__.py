"""One module per Google Cloud resource family: describe, create, delete."""
