"""The policy chain: the decisions that block or allow a query before it is resolved."""
