"""The method comparison: its runs (`runs`), its tables and files (`report`), and a comparison
run in parts joined seed by seed, with each method's cost (`joined`)."""
