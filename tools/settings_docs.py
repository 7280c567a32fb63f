"""Writes the two files generated from sssrd.config.FIELDS, or checks they are current.

packaging/sssrd.toml is the shipped /etc/sssrd/sssrd.toml (every key commented out with its
default) and docs/settings.md the settings reference. Both are rendered from each field's doc
text, section and reloadable flag, so a setting is described in one place: its Settings field.
Usage: python tools/settings_docs.py [--check]   (--check: exit 1 naming the stale files)
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

from sssrd.config import FIELDS, Field, Section, toml_literal

ROOT = Path(__file__).resolve().parents[1]
WIDTH = 96
REGENERATE = "python tools/settings_docs.py"
TABLE_HEAD = "| setting | default | reload | meaning |"

TOML_HEADER = """\
# /etc/sssrd/sssrd.toml — sssrd configuration.
#
# Every setting is shown commented out with its default. Each can also be set with an
# environment variable SSSRD_<NAME> (e.g. SSSRD_IDLE_TIMEOUT=60) or a flag --<name-with-dashes>;
# flags win over the environment, which wins over this file. Check the result with
#   sssrd check-config --config /etc/sssrd/sssrd.toml
# Durations are in seconds; sizes in bytes. "Reload applies it" marks the settings that
# `systemctl reload sssrd` changes live; the others need a restart.
#
# Generated from sssrd/config.py by `{regenerate}`.
"""

MARKDOWN_HEADER = """\
# Settings reference

<!-- Generated from sssrd/config.py by `{regenerate}`: edit the Settings fields, not this. -->

Every setting comes from, in increasing precedence: its default, the TOML file (`--config`,
`SSSRD_CONFIG`, or `/etc/sssrd/sssrd.toml` if it exists), an environment variable
`SSSRD_<NAME>`, and a flag `--<name-with-dashes>`; [`packaging/sssrd.toml`](../packaging/sssrd.toml)
lists them all, commented, with their defaults. Durations are seconds, sizes bytes; integer
settings take whole numbers only (`max_pending = 1.5` is refused, not rounded). An unknown key in
the file and an unknown `SSSRD_*` variable are both errors naming it (`SSSRD_CONFIG`, naming the
file, is the only other `SSSRD_` variable). *Reload* says what `systemctl reload sssrd` (SIGHUP)
does with a changed value: *live* applies it at once; *restart* leaves the running
value and names the setting in the `reloaded` log line's `needs_restart`.
"""


def sections() -> Iterator[tuple[Section, list[Field]]]:
    """The fields grouped by section, in Section's order; fields in declaration order."""
    for section in Section:
        yield section, [field for field in FIELDS if field.section is section]


def shipped_config() -> str:
    """packaging/sssrd.toml: each setting's doc as a comment above its commented default."""
    lines = [TOML_HEADER.format(regenerate=REGENERATE)]
    for section, fields in sections():
        lines.append(f"## {section} ".ljust(WIDTH, "#"))
        for field in fields:
            doc = field.doc.replace("`", "").replace("**", "").replace("*", "")
            if field.reloadable:
                doc += " Reload applies it."
            lines.append("")
            lines.extend(
                textwrap.wrap(
                    doc,
                    WIDTH - 2,
                    initial_indent="# ",
                    subsequent_indent="# ",
                    break_on_hyphens=False,
                )
            )
            lines.append(f"# {field.name} = {toml_literal(field.default)}")
        lines.append("")
    return "\n".join(lines)


def reference() -> str:
    """docs/settings.md: one table per section."""
    lines = [MARKDOWN_HEADER.format(regenerate=REGENERATE)]
    for section, fields in sections():
        lines += [f"## {section}", "", TABLE_HEAD, "|---|---|---|---|"]
        for field in fields:
            reload = "live" if field.reloadable else "restart"
            default = toml_literal(field.default)
            meaning = field.doc.replace("|", "\\|")  # a bare | would end the table cell
            lines.append(f"| `{field.name}` | `{default}` | {reload} | {meaning} |")
        lines.append("")
    return "\n".join(lines)


GENERATED: dict[str, Callable[[], str]] = {
    "packaging/sssrd.toml": shipped_config,
    "docs/settings.md": reference,
}


def stale() -> list[str]:
    """The generated files whose content differs from what FIELDS renders now."""
    return [
        path
        for path, render in GENERATED.items()
        if not (ROOT / path).is_file() or (ROOT / path).read_text() != render()
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report stale files")
    if parser.parse_args().check:
        paths = stale()
        for path in paths:
            print(f"{path} is stale: run {REGENERATE}", file=sys.stderr)
        return 1 if paths else 0
    for path, render in GENERATED.items():
        (ROOT / path).write_text(render())
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
