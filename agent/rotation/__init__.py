"""When to renew (pure) and the loop that keeps credentials fresh."""
