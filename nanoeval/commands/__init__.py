"""Sub-commands of `nanoeval`; each module defines `register(subparsers)`."""
