"""The swap coordinator: fits every model into one device's memory without thrashing, hanging or lying.

See DESIGN.md beside this file."""
