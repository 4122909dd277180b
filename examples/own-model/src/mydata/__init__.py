"""A researcher's own data loading: nothing here is gradreg's."""
