"""The SMTP sink the tests read mail from (aiosmtpd).

usage: python sink.py OUT_DIR [USER PASSWORD]

Listens on 127.0.0.1 on a port of the system's choosing and prints
`listening PORT` once it accepts connections. Every message it accepts
becomes OUT_DIR/<time>-<n>.json: the envelope, the headers the tests look
at, and the decoded plain-text and HTML parts. The file appears whole (it
is written aside and renamed). With USER and PASSWORD it requires AUTH.
It stops when its standard input closes (the test that started it ended)
or after an hour, whichever is first.
"""

import asyncio
import email
import email.policy
import itertools
import json
import logging
import os
import sys
import threading
import time
import warnings

from aiosmtpd.smtp import SMTP, AuthResult

# AUTH without TLS is what a loopback test relay does on purpose.
warnings.filterwarnings("ignore", message="Requiring AUTH while not requiring TLS")
logging.getLogger("mail.log").setLevel(logging.ERROR)

OUT = sys.argv[1]
CREDENTIALS = (sys.argv[2].encode(), sys.argv[3].encode()) if len(sys.argv) > 3 else None
COUNTER = itertools.count()


class Handler:
    async def handle_DATA(self, server, session, envelope):
        message = email.message_from_bytes(envelope.original_content or envelope.content,
                                           policy=email.policy.default)
        parts = {"text/plain": None, "text/html": None}
        for part in message.walk():
            kind = part.get_content_type()
            if kind in parts and parts[kind] is None and not part.is_multipart():
                parts[kind] = part.get_content()
        record = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
            "from": str(message.get("From", "")),
            "to": str(message.get("To", "")),
            "subject": str(message.get("Subject", "")),
            "text": parts["text/plain"],
            "html": parts["text/html"],
            "authenticated": getattr(session, "authenticated", False),
        }
        name = f"{time.time_ns()}-{next(COUNTER)}"
        aside = os.path.join(OUT, name + ".part")
        with open(aside, "w", encoding="utf-8") as f:
            json.dump(record, f)
        os.rename(aside, os.path.join(OUT, name + ".json"))
        return "250 Message accepted for delivery"


def authenticate(server, session, envelope, mechanism, auth_data):
    ok = CREDENTIALS is not None and (auth_data.login, auth_data.password) == CREDENTIALS
    # handled=False: aiosmtpd itself answers a failure with 535.
    return AuthResult(success=ok, handled=False)


def stop_when_stdin_closes(loop):
    sys.stdin.read()
    loop.call_soon_threadsafe(loop.stop)


async def main():
    os.makedirs(OUT, exist_ok=True)
    loop = asyncio.get_running_loop()
    kwargs = {}
    if CREDENTIALS:
        kwargs = dict(authenticator=authenticate, auth_required=True, auth_require_tls=False)
    server = await loop.create_server(lambda: SMTP(Handler(), **kwargs), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    print(f"listening {port}", flush=True)
    threading.Thread(target=stop_when_stdin_closes, args=(loop,), daemon=True).start()
    loop.call_later(3600, loop.stop)
    await asyncio.Event().wait()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except RuntimeError:
        # loop.stop() ends run() before main() returns: that is the stop.
        pass
