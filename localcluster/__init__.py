"""The deployment of docker-compose.yml as processes on one machine, for tests and for trying it.

`make cluster-up` / `make cluster-down`, or `Cluster().up()` / `.down()`; see harness.py.
"""
