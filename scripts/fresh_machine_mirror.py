"""The Debian mirror this machine's apt uses, for scripts/test-fresh-machine's debootstrap.

    python3 scripts/fresh_machine_mirror.py [APT_DIR]     (default /etc/apt)

Reads APT_DIR/sources.list and sources.list.d/*.list (one-line format) and sources.list.d/*.sources
(deb822), and prints two words: the archive's URI (an http(s) source of a Debian release suite with
`main`, e.g. http://deb.debian.org/debian) and the security archive's (a source of a `*-security` suite;
without one, the archive's sibling `.../debian-security`). Other sources (nodesource, Google, ...) are
skipped: their suites are not Debian's. Exits 1, saying why, when there is no Debian archive.
"""

import sys
from pathlib import Path

# Debian's release names and aliases: a source serving one of them is a Debian archive.
RELEASES = {"buster", "bullseye", "bookworm", "trixie", "forky", "duke", "sid",
            "oldoldstable", "oldstable", "stable", "testing", "unstable"}


def one_line_sources(text):
    """(types, uris, suites, components) of each `deb ...` line."""
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        words = line.split()
        kind, rest = words[0], words[1:]
        if rest and rest[0].startswith("["):  # [arch=amd64 signed-by=...]
            while rest and not rest[0].endswith("]"):
                rest = rest[1:]
            rest = rest[1:]
        if len(rest) >= 2:
            yield [kind], [rest[0]], [rest[1]], rest[2:]


def deb822_sources(text):
    """(types, uris, suites, components) of each enabled stanza."""
    stanzas, fields, key = [], {}, None
    for line in text.splitlines() + [""]:
        if line.startswith("#"):
            continue
        if not line.strip():
            if fields:
                stanzas.append(fields)
            fields, key = {}, None
        elif line[0] in " \t" and key:
            fields[key] += " " + line.strip()  # a continuation (e.g. an inline Signed-By key)
        elif ":" in line:
            key, value = line.split(":", 1)
            key = key.strip().lower()
            fields[key] = value.strip()
    for f in stanzas:
        if f.get("enabled", "yes").lower() == "no":
            continue
        yield f.get("types", "").split(), f.get("uris", "").split(), f.get("suites", "").split(), f.get("components", "").split()


def sources(apt):
    files = [apt / "sources.list", *sorted((apt / "sources.list.d").glob("*.list"))]
    for path in files:
        if path.is_file():
            yield from one_line_sources(path.read_text())
    for path in sorted((apt / "sources.list.d").glob("*.sources")):
        yield from deb822_sources(path.read_text())


def main():
    apt = Path(sys.argv[1] if len(sys.argv) > 1 else "/etc/apt")
    archive = security = None
    for types, uris, suites, components in sources(apt):
        if "deb" not in types:
            continue
        for uri in (u.rstrip("/") for u in uris if u.startswith(("http://", "https://"))):
            if archive is None and "main" in components and RELEASES & set(suites):
                archive = uri
            if security is None and any(s.endswith("-security") or s.endswith("/updates") for s in suites):
                security = uri
    if archive is None:
        print(f"no Debian archive (an http(s) source of a Debian release with main) in {apt}'s sources", file=sys.stderr)
        return 1
    if security is None:
        security = archive.rsplit("/", 1)[0] + "/debian-security"
    print(archive, security)
    return 0


if __name__ == "__main__":
    sys.exit(main())
