"""Run one collector worker (for the benchmark and for profiling it).

Usage: ``serve.py PORT [uvicorn|granian]``: uvicorn with uvloop and httptools (the default), or
granian (Rust HTTP server, ASGI interface, uvloop) with one worker process.
"""

from __future__ import annotations

import sys

if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8080
    server = sys.argv[2] if len(sys.argv) > 2 else "uvicorn"
    if server == "granian":
        from granian import Granian
        from granian.constants import HTTPModes, Interfaces, Loops

        Granian(
            "collector.app:create_app",
            factory=True,
            address="127.0.0.1",
            port=port,
            interface=Interfaces.ASGI,
            workers=1,
            loop=Loops.uvloop,
            http=HTTPModes.http1,
            backlog=4096,
            log_access=False,
        ).serve()
    else:
        import uvicorn

        uvicorn.run(
            "collector.app:create_app",
            factory=True,
            host="127.0.0.1",
            port=port,
            loop="uvloop",
            http="httptools",
            access_log=False,
            log_level="warning",
            backlog=4096,
        )
