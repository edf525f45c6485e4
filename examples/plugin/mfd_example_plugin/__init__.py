"""An example mfdiffuser plugin: `bar_line` (a finite mean-field game with an exact model) and
`skirmish` (a simulator-only two-team game). See ../README.md."""
