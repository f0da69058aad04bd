"""The wiring users touch: the CLI, the demo and (later) job specs and submission."""
