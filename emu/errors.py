"""Domain errors: what a user got wrong, said in one readable line. The CLI
prints these in red and exits non-zero; anything else is a bug (traceback
with -v)."""


class EmuError(Exception):
    """An error in the user's input or request, with a message fit to show as is."""
