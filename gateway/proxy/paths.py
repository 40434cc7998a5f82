"""Canonical request paths: one spelling per resource, computed once per request.

The route table prices the canonical path and the proxy forwards that same string, so the
origin receives exactly the path that was priced; no spelling (`%2e%2e`, `//`, `%70aid`, case
tricks) can reach a different origin path than the one the price was chosen for.

`canonicalize` rules, in order:

* The target must be origin-form (`/...`); absolute-form (`http://h/x`), `*` and anything else
  is refused. A fragment (`#...`, which clients must not send) is dropped.
* Percent-escapes: escapes of unreserved characters and of the sub-delimiters `!$&'()*+,=`,
  `:` and `@` are decoded (origins decode them anyway, so `/a%3Ab` and `/a:b` are one resource
  and must be one price); every other escape is kept, in upper-case hex. `;` is the exception:
  Tomcat-style origins give it a meaning (path parameters), so `%3B` stays encoded and a raw
  `;` stays raw. Raw characters RFC 3986 does not allow in a path but which clients send anyway
  (`"<>[]^`{|}`) are encoded.
* Refused (AmbiguousPath, 400): encoded `/` or `\\`, a raw `\\`, control characters (raw or
  encoded), raw non-ASCII, malformed escapes, double encoding (`%25` then two hex digits, also
  when those digits were themselves encoded), encoded bytes that are not UTF-8 (overlong `.`)
  or that a Unicode-normalising origin would fold into ASCII (full-width letters, `‥`).
* Dot segments are resolved (RFC 3986 5.2.4) after decoding, so `%2e%2e` is `..`. A `..` that
  would climb above the root is refused rather than clamped: no honest client sends one.
  Segments that some origin could still read as a dot segment (`..;x`, `.%3Bx`, `...`,
  `..%20`) are refused too.
* Repeated slashes are merged; a trailing slash is kept as sent.
* Windows/IIS equivalences are refused (AmbiguousPath, 400), because an IIS-style origin
  serves `/paid./x` as `/paid/x` (issue 12 item 3): a segment ending in `.` or a space
  (`%20`), before any `;` parameters; an NTFS stream suffix (`:$`, as in `::$DATA` or
  `:$i30:$INDEX_ALLOCATION`); and a segment shaped like an 8.3 short name (1-6 characters,
  `~`, a digit, then up to 3 characters of extension: `PAID-A~1`, `report~2.txt`), which
  Windows resolves to some long name in the same directory, so no route table could know
  which. `~` elsewhere (`/~user`, `/a~b`) is fine.

The query string is passed through byte for byte (only checked to be printable ASCII).
`canonicalize` is idempotent: its output canonicalises to itself.
"""

from __future__ import annotations

import re
import string
import unicodedata
from urllib.parse import unquote_to_bytes

from gateway.errors import AmbiguousPath

_UNRESERVED = frozenset(string.ascii_letters + string.digits + "-._~")
# Escapes of these are decoded: they mean the same to every origin whether encoded or not.
_DECODED = _UNRESERVED | frozenset("!$&'()*+,=:@")
# Raw characters that are not valid in a path but harmless once encoded.
_RAW_TO_ENCODE = re.compile(r'["<>\[\]^`{|}]')
# Anything else that is neither kept raw (unreserved, sub-delimiters, `:@/`) nor encoded.
_BAD_RAW = re.compile(r"""[^A-Za-z0-9\-._~!$&'()*+,;=:@/%"<>\[\]^`{|}]""")
_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
_MALFORMED_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")

# A path that needs no work: only kept characters, no escape, no `//`, no segment
# starting with a dot. Most requests take this branch.
_FAST_PATH = re.compile(r"/[A-Za-z0-9\-._~!$&'()*+,;=:@/]*")
_QUERY = re.compile(r"[\x21-\x7e]*")
_DOUBLE_ENCODED = re.compile(r"%25[0-9a-f]{2}", re.IGNORECASE)
_HIGH_ESCAPES = re.compile(r"(?:%[89A-F][0-9A-F])+")
# The part of a segment before its path parameters, as an origin that strips them sees it.
_PARAMS = re.compile(r";|%3B")
_DOTLIKE = re.compile(r"(?:%20)*\.(?:\.|%20)*")
_REPEATED_SLASH = re.compile(r"/{2,}")
# A segment that ends in `.` or a space (before its parameters), or an NTFS stream suffix.
_WINDOWS_TAIL = re.compile(r"(?:\.|%20)(?:(?:;|%3B)[^/]*)?(?:/|$)|:\$")
# An 8.3 short name: up to 6 characters, `~`, digits, an optional extension of up to 3.
_SHORT_NAME = re.compile(r"(?:^|/)[^/~.;%]{1,6}~[0-9]+(?:\.[^/.;%]{0,3})?(?:[;/]|%3B|$)")


def canonicalize(raw_target: str) -> tuple[str, str]:
    """Split a raw request target into (canonical path, raw query without `?`).

    Raises AmbiguousPath for any target the gateway refuses to guess about.
    """
    if "#" in raw_target:
        raw_target = raw_target.split("#", 1)[0]
    path, _, query = raw_target.partition("?")
    if query and not _QUERY.fullmatch(query):
        raise AmbiguousPath("the query string has a control, space or non-ASCII character")
    if not path.startswith("/"):
        raise AmbiguousPath("the request target must be a path starting with '/'")
    if _FAST_PATH.fullmatch(path) and "//" not in path and "/." not in path:
        # Without escapes, _WINDOWS_TAIL comes down to these substring tests (cheaper).
        if "./" in path or ".;" in path or path[-1] == "." or ":$" in path:
            raise AmbiguousPath(_WINDOWS_WHY)
        if "~" in path and _SHORT_NAME.search(path):
            raise AmbiguousPath(_SHORT_NAME_WHY)
        return path, query
    return _check_windows(_resolve_dots(_normalize_escapes(path))), query


_WINDOWS_WHY = "a segment ends in '.' or a space, or names an NTFS stream (':$')"
_SHORT_NAME_WHY = "a segment shaped like a Windows 8.3 short name ('NAME~1')"


def _check_windows(path: str) -> str:
    """Refuse what an IIS-style origin would read as another path (see the module docstring)."""
    if _WINDOWS_TAIL.search(path):
        raise AmbiguousPath(_WINDOWS_WHY)
    if "~" in path and _SHORT_NAME.search(path):
        raise AmbiguousPath(_SHORT_NAME_WHY)
    return path


def match_key(path: str, case_insensitive: bool) -> str:
    """The form of a canonical path used for matching (forwarding keeps the canonical path)."""
    return path.lower() if case_insensitive else path


def strip_params(key: str) -> str:
    """`key` as an origin that drops `;` path parameters (Tomcat, Jetty) reads it."""
    return _REPEATED_SLASH.sub("/", re.sub(r";[^/]*", "", key))


def check_pattern(pattern: str) -> str | None:
    """Why a route pattern from the config can never match as written, or None if it is fine."""
    wildcard = pattern.endswith("/*")
    base = pattern[:-2] if wildcard else pattern
    problem = _shape_problem(pattern, base, wildcard)
    if problem is not None or not base:
        return problem  # an empty base is `/*`: every path
    return _canonical_problem(base, wildcard)


def _shape_problem(pattern: str, base: str, wildcard: bool) -> str | None:
    """What is wrong with the pattern as written, before it is read as a path."""
    if not pattern.startswith("/"):
        return "a route path must start with '/'"
    if "?" in pattern or "#" in pattern:
        return "a route path must not contain a query ('?') or fragment ('#')"
    if "*" in base:
        return "'*' is only a wildcard as the whole last segment ('/prefix/*')"
    if ";" in base or "%3b" in base.lower():
        return "path parameters (';') are not allowed in a route path"
    if wildcard and base.endswith("/"):
        return f"write {base.rstrip('/') + '/*'!r}: a wildcard already covers the trailing slash"
    return None


def _canonical_problem(base: str, wildcard: bool) -> str | None:
    """Why requests could never arrive spelled as `base`, or None."""
    try:
        canonical, _ = canonicalize(base)
    except AmbiguousPath as exc:
        return f"not a valid request path: {exc.detail}"
    if canonical != base:
        suggestion = canonical + ("/*" if wildcard else "")
        return f"not canonical: requests for it arrive as {suggestion!r}; write that instead"
    return None


def _normalize_escapes(path: str) -> str:
    bad = _BAD_RAW.search(path)
    if bad is not None:
        if bad[0] == "\\":
            raise AmbiguousPath("a backslash in the path")
        raise AmbiguousPath("a control, space or non-ASCII character in the path")
    if "%" in path:
        if _MALFORMED_ESCAPE.search(path):
            raise AmbiguousPath("a malformed percent-escape in the path")
        path = _ESCAPE.sub(_normalize_escape, path)
    if _RAW_TO_ENCODE.search(path):
        path = _RAW_TO_ENCODE.sub(lambda m: f"%{ord(m[0]):02X}", path)
    # Checked on the output so that `%25%32%65` (a `%2e` in disguise) is caught as well.
    if _DOUBLE_ENCODED.search(path):
        raise AmbiguousPath("a double-encoded character in the path ('%25' + hex)")
    for run in _HIGH_ESCAPES.findall(path):
        _check_utf8(run)
    return path


def _normalize_escape(escape: re.Match[str]) -> str:
    code = int(escape[1], 16)
    if code in (0x2F, 0x5C):
        raise AmbiguousPath("an encoded '/' or '\\' in the path")
    if code < 0x20 or code == 0x7F:
        raise AmbiguousPath("an encoded control character in the path")
    decoded = chr(code)
    return decoded if decoded in _DECODED else "%" + escape[1].upper()


def _check_utf8(run: str) -> None:
    try:
        text = unquote_to_bytes(run).decode("utf-8")
    except UnicodeDecodeError:
        raise AmbiguousPath("percent-encoded bytes that are not UTF-8") from None
    for char in text:
        folded = unicodedata.normalize("NFKC", char)
        if folded != char and any(c < "\x80" for c in folded):
            raise AmbiguousPath(f"U+{ord(char):04X} folds to ASCII under Unicode normalisation")


def _resolve_dots(path: str) -> str:
    kept: list[str] = []
    trailing_slash = False
    for segment in path.split("/")[1:]:
        if segment in ("", "."):
            trailing_slash = True
        elif segment == "..":
            if not kept:
                raise AmbiguousPath("'..' climbs above the root")
            kept.pop()
            trailing_slash = True
        else:
            if segment[0] in ".%" and _DOTLIKE.fullmatch(_PARAMS.split(segment, 1)[0]):
                raise AmbiguousPath(f"segment {segment!r} reads as a dot segment to some origins")
            kept.append(segment)
            trailing_slash = False
    if not kept:
        return "/"
    return "/" + "/".join(kept) + ("/" if trailing_slash else "")
