"""Every component's file format: pure pydantic models, loaded the same way.

``peer`` and ``scheduler`` are the YAML files users (and the operator) write;
``load`` reads a file into its model with errors that name the key; ``units``
parses sizes and durations; ``ports`` holds the default ports every component
and manifest agrees on. One idiom throughout: snake_case fields, camelCase keys
in the file (aliases), unknown keys refused. Nothing here imports a runtime
(peer, scheduler, operator); the rule model comes from ``damselfly.api``.
"""
