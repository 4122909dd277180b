"""A researcher's own networks: nothing here is gradreg's."""
