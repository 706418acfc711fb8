"""``sluice keys``: create (offline, or through a gateway's admin API), list, revoke, restore, rotate.

Answers are printed for people (a table, "revoked key X", errors as one line ``sluice: <message>``); ``--json``
prints the admin API's raw JSON instead. Config lines are YAML that parses back to exactly the values given
(every string quoted, so ids like ``a:b``, ``#x`` or ``yes`` stay strings)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from typing import Any

ADMIN_ID = "admin"  # `keys create --id admin` with no --tier: the admin API's own key


def add_keys_parser(sub: Any) -> None:
    """The ``keys`` command and its subcommands, on the ``sluice`` parser's subparsers."""
    keys = sub.add_parser("keys", help="manage API keys")
    keys_sub = keys.add_subparsers(title="keys commands")
    create = keys_sub.add_parser(
        "create", help="make a new key: through the admin API with --url, else offline (prints it once, with the "
                       "config line for it); --admin (or --id admin with no --tier) makes the admin API's key")
    create.add_argument("--id", help="the key's id (shown in logs and metrics, never the key)")
    create.add_argument("--tier", help="the key's tier (required for an API key: one of the config's tiers)")
    create.add_argument("--user")
    create.add_argument("--tenant", default="default")
    create.add_argument("--admin", action="store_true",
                        help="make the admin API's key: prints the auth.admin_key_hash line")
    _add_admin_flags(create, required=False)
    create.set_defaults(run=keys_create)
    listing = keys_sub.add_parser("list", help="list the keys a gateway knows (admin API)")
    _add_admin_flags(listing, required=True)
    listing.set_defaults(run=keys_list)
    for name, run, help_text in (
        ("revoke", keys_revoke, "revoke a key on every gateway sharing the state (admin API)"),
        ("restore", keys_restore, "accept a revoked key again (admin API)"),
        ("rotate", keys_rotate, "give an issued key a new secret, shown once; the old one stops working (admin API)"),
    ):
        command = keys_sub.add_parser(name, help=help_text)
        command.add_argument("--id", required=True)
        _add_admin_flags(command, required=True)
        command.set_defaults(run=run)


def keys_list(args: argparse.Namespace) -> int:
    answer = _admin_call(args, "GET", "/admin/keys")
    if answer is None or args.json:
        return 1 if answer is None else 0
    rows = [["ID", "USER", "TENANT", "TIER", "SOURCE", "STATE"]]
    rows += [[k["id"], k["user"], k["tenant"], k["tier"], k["source"], "revoked" if k["revoked"] else "active"]
             for k in answer["data"]]
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    return 0


def keys_revoke(args: argparse.Namespace) -> int:
    return _say(args, _admin_call(args, "POST", "/admin/keys/revoke", {"id": args.id}), f"revoked key {args.id}")


def keys_restore(args: argparse.Namespace) -> int:
    return _say(args, _admin_call(args, "POST", "/admin/keys/restore", {"id": args.id}), f"restored key {args.id}")


def keys_rotate(args: argparse.Namespace) -> int:
    answer = _admin_call(args, "POST", "/admin/keys/rotate", {"id": args.id})
    if answer is not None and not args.json:
        print(f"rotated key {args.id}: the old key no longer works")
        print(f"New API key (shown once, store it now): {answer['key']}")
    return 1 if answer is None else 0


def keys_create(args: argparse.Namespace) -> int:
    from sluice.identity._api_keys import generate_key, hash_key

    admin = args.admin or (args.id == ADMIN_ID and args.tier is None)
    if admin:
        if args.url:
            print("sluice: the admin key is not issued through the admin API: run without --url and put the "
                  "printed line in the config", file=sys.stderr)
            return 2
        key = generate_key()
        if not args.admin:
            print("(an admin key, as --id admin gave no --tier; for an API key named admin, give --tier)",
                  file=sys.stderr)
        print(f"Admin key (shown once, store it now): {key}")
        print("Config lines (the admin API's key):")
        print(f"auth:\n  admin_key_hash: {_quoted(hash_key(key))}")
        return 0
    if not args.id or not args.tier:
        print("sluice: keys create needs --id and --tier (a tier of your config's tiers:, e.g. --tier default)",
              file=sys.stderr)
        return 2
    if args.url:
        body = {"id": args.id, "tenant": args.tenant, "tier": args.tier, **({"user": args.user} if args.user else {})}
        answer = _admin_call(args, "POST", "/admin/keys", body)
        if answer is not None and not args.json:
            print(f"created key {answer['id']} (user {answer['user']}, tenant {answer['tenant']}, "
                  f"tier {answer['tier']})")
            print(f"API key (shown once, store it now): {answer['key']}")
        return 1 if answer is None else 0
    key = generate_key()
    fields = {"id": args.id, "hash": hash_key(key), **({"user": args.user} if args.user else {}),
              "tenant": args.tenant, "tier": args.tier}
    print(f"API key (shown once, store it now): {key}")
    print("Config line, under keys:")
    print("  - {" + ", ".join(f"{name}: {_quoted(value)}" for name, value in fields.items()) + "}")
    return 0


def _quoted(text: str) -> str:
    """A YAML scalar that reads back as exactly ``text`` (a JSON string is a YAML double-quoted scalar)."""
    return json.dumps(text, ensure_ascii=False)


def _add_admin_flags(parser: argparse.ArgumentParser, *, required: bool) -> None:
    parser.add_argument("--url", required=required, help="the gateway, e.g. http://127.0.0.1:8000")
    parser.add_argument("--admin-key", default=os.environ.get("SLUICE_ADMIN_KEY"),
                        help="the admin key (default $SLUICE_ADMIN_KEY)")
    parser.add_argument("--json", action="store_true", help="print the admin API's raw JSON answer")


def _say(args: argparse.Namespace, answer: dict[str, Any] | None, line: str) -> int:
    if answer is not None and not args.json:
        print(line)
    return 1 if answer is None else 0


def _admin_call(args: argparse.Namespace, method: str, path: str,
                body: dict[str, object] | None = None) -> dict[str, Any] | None:
    """Call the admin API: its JSON answer (printed as is with --json), or None after saying what went wrong."""
    if not args.admin_key:
        print("sluice: the admin API needs --admin-key or $SLUICE_ADMIN_KEY", file=sys.stderr)
        return None
    request = urllib.request.Request(
        args.url.rstrip("/") + path, method=method, data=json.dumps(body).encode() if body is not None else None,
        headers={"authorization": f"Bearer {args.admin_key}", "content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - the operator's own URL
            answer: dict[str, Any] = json.load(response)
    except urllib.error.HTTPError as exc:
        text = exc.read().decode(errors="replace")
        print(text if args.json else f"sluice: {_error_message(text, exc.code)}", file=sys.stderr)
        return None
    except urllib.error.URLError as exc:
        print(f"sluice: cannot reach {args.url}: {exc.reason}", file=sys.stderr)
        return None
    if args.json:
        print(json.dumps(answer, indent=2))
    return answer


def _error_message(text: str, status: int) -> str:
    """The message of an OpenAI-shaped error body (the body itself when it is not one)."""
    try:
        message = json.loads(text)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return f"HTTP {status}: {text.strip()[:200] or 'no body'}"
    return str(message)
