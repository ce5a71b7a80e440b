"""Pure renderers: text the program places on hosts, as functions of the model (no Pulumi here)."""
