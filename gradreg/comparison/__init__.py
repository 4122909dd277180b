"""The method comparison: its runs (`runs`) and its tables and files (`report`)."""
