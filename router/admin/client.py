"""A small client of the admin API, for the ``switchboard`` commands (stdlib only)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import quote

__all__ = ["AdminClient", "AdminError", "client_path", "policy_path"]


class AdminError(Exception):
    """The API refused a request (``status`` and ``code`` set) or could not be reached."""

    def __init__(self, message: str, status: int = 0, code: str = "") -> None:
        super().__init__(message)
        self.status, self.code = status, code


def policy_path(topic: str) -> str:
    return f"/api/topics{quote(topic, safe='/')}/policy"


def client_path(client_id: str, action: str) -> str:
    return f"/api/clients/{quote(client_id, safe='')}/{action}"


class AdminClient:
    """Requests to the admin API at ``url`` (``http://HOST:PORT``), with ``token`` if given."""

    def __init__(self, url: str, token: str | None, timeout: float = 5.0) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def request(self, method: str, path: str, body: object = None) -> Any:
        """The decoded JSON reply. Raises :class:`AdminError`."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data, method=method)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                return json.load(response)
        except urllib.error.HTTPError as error:
            raise _refusal(error) from None
        except (urllib.error.URLError, OSError) as error:
            raise AdminError(f"cannot reach the admin API at {self.url}: {error}") from None


def _refusal(error: urllib.error.HTTPError) -> AdminError:
    try:
        body = json.load(error)["error"]
        return AdminError(f"{body['code']}: {body['message']}", error.code, body["code"])
    except (ValueError, KeyError, TypeError):
        return AdminError(f"HTTP {error.code} {error.reason}", error.code)
