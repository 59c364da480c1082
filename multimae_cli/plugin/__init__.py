"""The plugin contract: hook specifications and API version, the registry, the Modality / Task / Teacher
records, the protocols their factories' products follow, and the factory that builds models from them.

Plugins import these names from `multimae_cli`, the public namespace, not from here."""
