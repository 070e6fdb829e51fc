"""One error model: everything mirkit reports to a user derives from ``MirkitError``.

The CLI catches ``MirkitError`` once at its top, prints the message (never a traceback) and exits with
the class's ``exit_code``:

=====  ==========================================================================================
code   meaning
=====  ==========================================================================================
0      success: every requested output was written
1      runtime failure (``MirkitError``): the work ran and failed, or a requested output is incomplete
2      bad input (``InputError``): parameters, files, manifests, stores or checkpoints that cannot be used
=====  ==========================================================================================
"""

from __future__ import annotations


class MirkitError(Exception):
    """A failure mirkit explains in one message (exit code 1: the work ran and did not succeed)."""

    exit_code = 1


class InputError(MirkitError, ValueError):
    """Something given to mirkit cannot be used: a parameter, file, manifest, store or checkpoint (exit 2)."""

    exit_code = 2
