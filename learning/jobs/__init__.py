"""Jobs: long operations in their own processes."""
