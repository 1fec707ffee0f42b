"""The reference-style webhook receiver the webhooks bench compares with:
a minimal Flask service that checks the HMAC signature and appends the
delivery to a file, as the reference system's small web service does.
Run: python flask_ref.py PORT SECRET_FILE OUT_FILE"""

import hashlib
import hmac
import sys

from flask import Flask, abort, request

port, secret_file, out_file = int(sys.argv[1]), sys.argv[2], sys.argv[3]
secret = open(secret_file, "rb").read().strip()
app = Flask(__name__)


@app.post("/webhook")
def webhook():
    body = request.get_data()
    expected = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, request.headers.get("X-Hub-Signature-256", "")):
        abort(401)
    with open(out_file, "ab") as out:
        out.write(request.headers.get("X-GitHub-Delivery", "").encode() + b" " + body + b"\n")
    return "", 202


if __name__ == "__main__":
    import logging

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    app.run(host="127.0.0.1", port=port, threaded=True)
