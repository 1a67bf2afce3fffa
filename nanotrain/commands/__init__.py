"""Sub-commands of `nanotrain`; each module defines `register(subparsers)`."""
