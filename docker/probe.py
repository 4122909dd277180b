#!/usr/bin/env python3
"""Container healthcheck: exit 0 when every URL answers 2xx within the timeout, else 1.

gradreg-probe http://127.0.0.1:8000/readyz [URL ...]
"""

import sys
import urllib.error
import urllib.request

TIMEOUT_S = 5


def main(urls: list[str]) -> int:
    if not urls:
        print("usage: gradreg-probe URL [URL ...]", file=sys.stderr)
        return 2
    for url in urls:
        try:
            with urllib.request.urlopen(url, timeout=TIMEOUT_S):
                pass  # urlopen raises for anything but 2xx/3xx
        except (urllib.error.URLError, OSError) as error:
            print(f"{url}: {error}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
