"""python -m localcluster up|down|status (make cluster-up, make cluster-down)."""

from __future__ import annotations

import argparse
import sys

from localcluster.harness import API_URL, MLFLOW_URL, NODES, Cluster, ClusterError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m localcluster", description=__doc__)
    parser.add_argument("action", choices=["up", "down", "status"])
    args = parser.parse_args(argv)
    cluster = Cluster()
    try:
        if args.action == "up":
            cluster.up()
            print(f"API {API_URL} (token: cat {cluster.state / 'api_token'})")
            print(f"MLflow UI {MLFLOW_URL}")
            print("Ray dashboard http://{}:8265".format(NODES["ray-head"].address))
            print("Stop it with `make cluster-down`.")
        elif args.action == "down":
            cluster.down()
            print("local cluster stopped")
        else:
            print("up" if cluster.is_up() else "down")
    except (ClusterError, PermissionError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
