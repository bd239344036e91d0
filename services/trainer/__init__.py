"""seqrec package."""
