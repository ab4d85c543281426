"""A software passkey for the passkey tests (tests/api/passkeys.rs).

One process is one authenticator holding one credential: soft-webauthn's
SoftWebauthnDevice, an implementation independent of the server's. It
reads one JSON command per line on stdin and answers one JSON line:

  {"op": "create", "options": {...}, "origin": "https://..."}
  {"op": "get", "options": {...}, "origin": "https://...", "uv": false}

`options` are the server's, as JSON (`{"publicKey": {...}}`, byte fields
in base64url); the answer is the PublicKeyCredential as JSON. soft-webauthn
signs assertions with user presence only; with "uv": true this script
signs the same way but also sets the user-verified flag, as a platform
authenticator with a PIN or fingerprint would.
"""

import base64
import json
import sys
from struct import pack

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from fido2.utils import sha256
from soft_webauthn import SoftWebauthnDevice


def unb64(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def b64(data):
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def creation_options(options):
    key = dict(options["publicKey"])
    key["challenge"] = unb64(key["challenge"])
    key["user"] = dict(key["user"], id=unb64(key["user"]["id"]))
    return {"publicKey": key}


def request_options(options):
    key = dict(options["publicKey"])
    key["challenge"] = unb64(key["challenge"])
    return {"publicKey": key}


def verified_get(device, options, origin):
    """An assertion with the user-present and user-verified flags."""
    device.sign_count += 1
    client_data = json.dumps({
        "type": "webauthn.get",
        "challenge": b64(options["publicKey"]["challenge"]),
        "origin": origin,
    }).encode("utf-8")
    auth_data = sha256(device.rp_id.encode("ascii")) + b"\x05" + pack(">I", device.sign_count)
    signature = device.private_key.sign(auth_data + sha256(client_data), ec.ECDSA(hashes.SHA256()))
    return {
        "rawId": device.credential_id,
        "response": {
            "authenticatorData": auth_data,
            "clientDataJSON": client_data,
            "signature": signature,
            "userHandle": device.user_handle,
        },
    }


def as_json(credential):
    response = {k: b64(v) for k, v in credential["response"].items() if v is not None}
    raw = b64(credential["rawId"])
    return {"id": raw, "rawId": raw, "type": "public-key", "response": response}


def main():
    device = SoftWebauthnDevice()
    for line in sys.stdin:
        command = json.loads(line)
        try:
            if command["op"] == "create":
                out = as_json(device.create(creation_options(command["options"]), command["origin"]))
            elif command.get("uv"):
                out = as_json(verified_get(device, request_options(command["options"]), command["origin"]))
            else:
                out = as_json(device.get(request_options(command["options"]), command["origin"]))
        except Exception as e:  # the test reads the reason
            out = {"error": str(e)}
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
