"""reconciler secret set ENV NAME: encrypt a value from stdin to the
environment's age recipients and write it into the service's YAML in place.

The value is read from standard input (or asked for without echo on a
terminal), encrypted in this process (pyrage) to every key listed in
``environments/ENV/age-recipients``, and written as a literal block (or,
in a flow mapping, a quoted string) where the secret's ``encrypted:`` is;
everything else in the file, comments included, stays byte for byte.  A
secret the environment does not have yet is added to ``--service``.  The
value is never printed; commit the file as any other change.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from pathlib import Path

from reconciler.cli.commands._common import add_repo_argument


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    put = sub.add_parser("set", help="encrypt stdin to the environment's age recipients and write it into the YAML",
                         description="encrypt stdin to environments/ENV/age-recipients and write it into the YAML, comments kept")
    put.add_argument("environment", metavar="ENV", help="the environment")
    put.add_argument("name", metavar="NAME", help="the secret's name (as in secrets: - name: NAME)")
    add_repo_argument(put)
    put.add_argument("--service", help="the service to add the secret to when the environment has no secret NAME yet")
    put.add_argument("--as", dest="delivery", choices=("env", "file"),
                     help="for a new secret: a variable (env, the default) or a file in /run/secrets (file)")
    put.add_argument("--var", help="for a new secret: the variable (default for env: NAME in upper case)")
    put.add_argument("--keep-newline", action="store_true", help="keep a final newline of the input (default: strip one)")


def run(args: argparse.Namespace) -> int:
    from reconciler.adapters import secrets
    from reconciler.core import schema
    from reconciler.errors import StalledError

    root = Path(args.repo)
    base = root / "environments" / args.environment
    if not (base / "environment.yaml").is_file():
        raise StalledError(f"{base / 'environment.yaml'}: no such environment in the working tree {root}")
    where = base / secrets.RECIPIENTS_FILE
    if not where.is_file():
        raise StalledError(f"{where}: missing; write the agent's age public key there (age-keygen -y KEYFILE > {where})")
    recipients = secrets.parse_recipients(where.read_text(), str(where))
    edit = _locate(base, args)  # before the value is asked for: a wrong name fails first
    ciphertext = secrets.encrypt(_read_value(args.name, args.keep_newline), recipients)
    path, line, how = edit(ciphertext)
    print(f"{path}:{line}: secret {args.name!r} {how}, encrypted to {len(recipients)} recipient"
          f"{'s' if len(recipients) != 1 else ''} of {where.name}; commit it")
    problems = schema.validate(_snapshot(root), args.environment)
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


def _snapshot(root: Path):
    from reconciler.adapters import source

    return source.snapshot_worktree(root)


def _read_value(name: str, keep_newline: bool) -> bytes:
    from reconciler.errors import StalledError

    if sys.stdin.isatty():
        value = getpass.getpass(f"value of {name} (not echoed): ").encode()
    else:
        value = sys.stdin.buffer.read()
        if not keep_newline and value.endswith(b"\n"):
            value = value[:-2] if value.endswith(b"\r\n") else value[:-1]
    if not value:
        raise StalledError(f"secret {name!r}: the value is empty; give it on standard input")
    return value


# ------------------------------------------------------------------ the edit


def _files(base: Path) -> list[tuple[Path, tuple[str, ...]]]:
    """Where services are written: environment.yaml's ``services`` and services/*.yaml."""
    found = [(base / "environment.yaml", ("services",))]
    found += [(p, ()) for p in sorted((base / "services").glob("*.yaml"))]
    return found


def _get(mapping, key: str):
    for k, v in mapping.value:
        if k.value == key:
            return k, v
    return None, None


def _services(node, keys: tuple[str, ...], path: Path):
    """(service name, its mapping node) in a composed file."""
    if keys:
        _, node = _get(node, keys[0]) if node is not None and node.tag.endswith(":map") else (None, None)
        if node is None or not node.tag.endswith(":map"):
            return []
        return [(k.value, v) for k, v in node.value]
    return [(path.stem, node)] if node is not None and node.tag.endswith(":map") else []


def _locate(base: Path, args: argparse.Namespace):
    """Where the secret is (or goes): a function writing a ciphertext there,
    returning (file, line, what it did)."""
    from ruamel.yaml import YAML

    from reconciler.errors import StalledError

    matches, owners = [], {}
    for path, keys in _files(base):
        text = path.read_text()
        root = YAML().compose(text)
        for service, node in _services(root, keys, path):
            owners[service] = (path, text, node)
            _, listed = _get(node, "secrets") if node.tag.endswith(":map") else (None, None)
            for item in (listed.value if listed is not None and listed.tag.endswith(":seq") else []):
                if item.tag.endswith(":map") and getattr(_get(item, "name")[1], "value", None) == args.name:
                    matches.append((service, path, text, item))
    if args.service:
        matches = [m for m in matches if m[0] == args.service]
    if len(matches) > 1:
        raise StalledError(f"secret {args.name!r} is in services {', '.join(m[0] for m in matches)}; choose one with --service")
    if matches:
        service, path, text, item = matches[0]
        if _get(item, "file")[1] is not None:
            raise StalledError(f"{path}:{item.start_mark.line + 1}: secret {args.name!r} of {service} is read from a "
                               "file on the host (file:); remove file: to keep it encrypted in the repository")
        change, how = (lambda ciphertext: _replace(text, item, ciphertext)), f"of {service} replaced"
    else:
        if not args.service:
            raise StalledError(f"no secret {args.name!r} in environment {args.environment}; "
                               "give --service to add it (with --as and --var if need be)")
        if args.service not in owners:
            raise StalledError(f"no service {args.service!r} in environment {args.environment} (have: {', '.join(sorted(owners))})")
        path, text, node = owners[args.service]
        change, service, how = (lambda ciphertext: _add(text, node, args, ciphertext)), args.service, f"added to {args.service}"

    def write(ciphertext: str) -> tuple[Path, int, str]:
        new, line = change(ciphertext)
        _check(new, path, service, args.name, ciphertext)
        path.write_text(new)
        return path, line, how

    return write


def _block(ciphertext: str, indent: int) -> str:
    return "|\n" + "".join(" " * indent + line + "\n" for line in ciphertext.strip().splitlines())


def _replace(text: str, item, ciphertext: str) -> tuple[str, int]:
    """The item's ``encrypted`` value replaced (added when absent), nothing else touched."""
    key, value = _get(item, "encrypted")
    if value is None:
        return _insert_key(text, item, ciphertext), item.start_mark.line + 1
    start, end = value.start_mark.index, value.end_mark.index
    if item.flow_style:
        return text[:start] + json.dumps(ciphertext) + text[end:], value.start_mark.line + 1
    if text[end - 1:end] == "\n":  # a block scalar ends at the start of the next line
        rest, cut = "", end
    else:
        eol = text.find("\n", end)
        eol = len(text) if eol < 0 else eol
        rest, cut = text[end:eol].strip(), min(eol + 1, len(text))
    comment = f" {rest}" if rest.startswith("#") else ""
    return text[:start] + _block(ciphertext, key.start_mark.column + 2).replace("|\n", f"|{comment}\n", 1) + text[cut:], value.start_mark.line + 1


def _end_of(node) -> int:
    """Where to write after ``node``: after the line its last scalar ends on."""
    while node.tag.endswith((":map", ":seq")) and node.value and not node.flow_style:
        last = node.value[-1]
        node = last[1] if isinstance(last, tuple) else last
    return node.end_mark.index, node.end_mark.column


def _after_line(text: str, node) -> int:
    index, column = _end_of(node)
    if column == 0 and text[index - 1:index] == "\n":
        return index
    eol = text.find("\n", index)
    return len(text) if eol < 0 else eol + 1


def _insert_key(text: str, item, ciphertext: str) -> str:
    column = item.value[0][0].start_mark.column
    at = _after_line(text, item)
    return text[:at] + " " * column + "encrypted: " + _block(ciphertext, column + 2) + text[at:]


def _entry_lines(args, ciphertext: str, column: int) -> str:
    """A new block-style list item at ``column`` (the dash's)."""
    pad = " " * (column + 2)
    lines = [f"{' ' * column}- name: {args.name}\n"]
    if args.var:
        lines.append(f"{pad}env: {args.var}\n")
    if args.delivery == "file":
        lines.append(f"{pad}as: file\n")
    lines.append(f"{pad}encrypted: " + _block(ciphertext, column + 4))
    return "".join(lines)


def _add(text: str, service, args, ciphertext: str) -> tuple[str, int]:
    from reconciler.errors import StalledError

    if service.flow_style:
        raise StalledError(f"line {service.start_mark.line + 1}: the service is a flow mapping ({{...}}); "
                           "write it in block style, or add the secret by hand")
    key, listed = _get(service, "secrets")
    if listed is None:
        column = service.value[0][0].start_mark.column
        at = _after_line(text, service)
        new = " " * column + "secrets:\n" + _entry_lines(args, ciphertext, column + 2)
        return text[:at] + new + text[at:], text[:at].count("\n") + 2
    if listed.flow_style:
        fields = {"name": args.name, **({"env": args.var} if args.var else {}), **({"as": "file"} if args.delivery == "file" else {})}
        entry = "{" + ", ".join(f"{k}: {v}" for k, v in fields.items()) + f", encrypted: {json.dumps(ciphertext)}" + "}"
        close = listed.end_mark.index - 1  # the ']'
        sep = ", " if listed.value else ""
        return text[:close] + sep + entry + text[close:], listed.end_mark.line + 1
    column = listed.start_mark.column
    at = _after_line(text, listed)
    return text[:at] + _entry_lines(args, ciphertext, column) + text[at:], text[:at].count("\n") + 1


def _check(new: str, path: Path, service: str, name: str, ciphertext: str) -> None:
    """The edited text reads back with exactly this ciphertext at the secret."""
    from ruamel.yaml import YAML

    from reconciler.errors import StalledError

    data = YAML(typ="safe").load(new)
    entry = data.get("services", {}).get(service) if path.name == "environment.yaml" else data
    found = [s for s in (entry or {}).get("secrets") or [] if isinstance(s, dict) and s.get("name") == name]
    if len(found) != 1 or str(found[0].get("encrypted", "")).strip() != ciphertext.strip():
        raise StalledError(f"{path}: editing secret {name!r} in place went wrong; nothing was written, edit it by hand")
