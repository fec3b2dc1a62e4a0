"""A real peer process for the native tests: runs Python snippets sent as JSON lines on stdin.

Each request is ``{"code": "..."}``; the snippet runs in one namespace kept across requests and may set
``result`` (JSON-serialisable). The reply is one JSON line: ``{"ok": true, "result": ...}`` or
``{"ok": false, "type": ..., "status_code": ..., "message": ...}``.
"""

import json
import sys
import traceback


def main() -> None:
    namespace: dict[str, object] = {}
    exec(
        "import numpy as np\nfrom llm_datadist import *\nfrom llm_datadist.ext import hosting as ext",
        namespace,
    )
    out = sys.stdout
    for line in sys.stdin:
        request = json.loads(line)
        namespace["result"] = None
        try:
            exec(request["code"], namespace)
            reply = {"ok": True, "result": namespace.get("result")}
        except Exception as error:
            reply = {
                "ok": False,
                "type": type(error).__name__,
                "status_code": int(getattr(error, "status_code", -1)),
                "message": str(error),
                "traceback": traceback.format_exc(),
            }
        out.write(json.dumps(reply) + "\n")
        out.flush()


if __name__ == "__main__":
    main()
