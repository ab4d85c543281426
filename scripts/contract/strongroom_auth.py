"""Schemathesis hooks for the contract run (scripts/contract): every request
carries a fresh access token of the tenant's admin (tokens live 60 s, so a
new one is taken by logging in every 30 s), from STRONGROOM_CONTRACT_URL,
_TENANT, _EMAIL and _PASSWORD."""

import json
import os
import urllib.request

import schemathesis


def _login():
    body = json.dumps(
        {
            "tenant": os.environ["STRONGROOM_CONTRACT_TENANT"],
            "email": os.environ["STRONGROOM_CONTRACT_EMAIL"],
            "password": os.environ["STRONGROOM_CONTRACT_PASSWORD"],
        }
    ).encode()
    request = urllib.request.Request(
        os.environ["STRONGROOM_CONTRACT_URL"] + "/api/v1/auth/login",
        data=body,
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)["access_token"]


@schemathesis.auth(refresh_interval=30)
class AdminToken:
    def get(self, case, context):
        return _login()

    def set(self, case, data, context):
        case.headers = case.headers or {}
        case.headers["Authorization"] = f"Bearer {data}"
