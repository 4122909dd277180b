"""``python -m gradreg``: train, compare, data and predict."""
