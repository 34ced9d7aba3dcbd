"""Values in `#SBATCH` lines, written so that sbatch reads back exactly what the user gave.

sbatch reads an `#SBATCH --key=value` line with shell-like quoting ('...', "...", and a backslash
escapes the next character even inside single quotes), one line per option; it never runs the
value through a shell. Measured on Slurm 22.05: `--job-name='a'"'"'b$(touch x)`;c "q" #h'` comes
back as the job name a'b$(touch x)`;c "q" #h and runs nothing; `'a\\b'` comes back as a\b; an
unmatched quote is a fatal error. So every value is shell-quoted with its backslashes doubled,
and a value that cannot be written on one line (a line break, any control character) is refused.
"""

from __future__ import annotations

import shlex

from nnslurm.core.errors import UsageError


def check_value(flag: str, value: str) -> str:
    """`value` unchanged, or a UsageError naming `flag` when no #SBATCH line can carry it."""
    bad = sorted({ch for ch in value if ord(ch) < 32 or ord(ch) == 127})
    if bad:
        shown = ", ".join(repr(ch) for ch in bad)
        raise UsageError(
            f"{flag} {value!r} contains {shown}: an #SBATCH line cannot carry control characters "
            "(a line break would start a new line of the job script).",
            hint=f"give {flag} a value on one line, without control characters.",
        )
    return value


def escape_backslashes(value: str) -> str:
    """For writers that shell-quote values themselves (submitit 1.5 does): sbatch still reads a
    backslash inside quotes as an escape."""
    return value.replace("\\", "\\\\")


def quote(value: str) -> str:
    """The text to put after `--key=` so that sbatch reads `value` back."""
    return shlex.quote(escape_backslashes(value))


def directive(key: str, value: str | None = None) -> str:
    """`#SBATCH --key` or `#SBATCH --key=<value, quoted>`."""
    if value is None:
        return f"#SBATCH --{key}"
    return f"#SBATCH --{key}={quote(check_value(f'--{key}', value))}"


def check_log_folder(flag: str, path: str) -> str:
    """A folder for job output files: also no '%', which SLURM expands in file names (%j, %x...)."""
    check_value(flag, path)
    if "%" in path:
        raise UsageError(
            f"{flag} {path!r} contains '%': SLURM expands %j, %x, ... in output file names, so the "
            "job would write its logs somewhere else.",
            hint=f"choose a {flag} without '%'.",
        )
    return path
